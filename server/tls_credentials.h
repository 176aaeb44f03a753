// TLS for mpa_server's gRPC port (--tls_cert, --tls_key, --tls_client_ca,
// --tls_reload_interval_s): the flags' combinations, the PEM files checked with libcrypto before
// the server starts (so a bad file stops it at once, named, instead of failing every handshake
// later), and the gRPC server credentials built from them.
#pragma once

#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace mpa::server {

// Longest --tls_reload_interval_s: a day (a longer one would outlive short-lived certificates).
inline constexpr int kMaxTlsReloadIntervalSeconds = 86400;

struct TlsOptions {
  std::string cert_file;  // PEM certificate chain, the server's certificate first
  std::string key_file;   // PEM private key of that certificate (unencrypted)
  // PEM bundle of the CAs that sign client certificates. Set: every client must present a
  // certificate one of them signed (mutual TLS). Empty: clients are not asked for one.
  std::string client_ca_file;
  // How often gRPC re-reads the three files (certificate rotation without a restart); 0 reads
  // them once at start-up.
  int reload_interval_s = 600;

  bool enabled() const { return !cert_file.empty() || !key_file.empty(); }
};

// The flags' combinations: --tls_cert and --tls_key together or not at all, --tls_client_ca only
// with them, an interval in [0, kMaxTlsReloadIntervalSeconds]. InvalidArgument naming the flag.
absl::Status CheckTlsOptions(const TlsOptions& options);

// What the files hold, for the start-up log line and for static credentials.
struct TlsMaterial {
  std::string cert_pem;
  std::string key_pem;
  std::string client_ca_pem;
  std::string subject;         // the server certificate's subject (RFC 2253)
  std::string not_after;       // its expiry, as libcrypto prints it
  int chain_certificates = 0;  // certificates in cert_file
  int client_cas = 0;          // certificates in client_ca_file
};

// Reads and checks the files of enabled options: each is readable and parses (cert_file and
// client_ca_file as one or more PEM certificates, key_file as one unencrypted PEM private key),
// the key belongs to the first certificate, and that certificate has not expired. The error names
// the flag and the file (NotFound / PermissionDenied for a file that cannot be read,
// InvalidArgument otherwise) and never quotes a file's content.
absl::StatusOr<TlsMaterial> LoadTlsMaterial(const TlsOptions& options);

// The gRPC credentials of enabled, loaded options. With a reload interval: gRPC's TLS
// credentials over its file-watching certificate provider, which re-reads the three files every
// interval, so new connections get a renewed certificate (a Kubernetes secret updated in place, a
// certbot renewal) without a restart. gRPC does not check what it re-reads: a file replaced by
// one that cannot be read or does not match fails new handshakes until a good one is back (the
// files must be replaced atomically, as Kubernetes does). Without an interval: gRPC's SSL
// credentials of `material`'s contents. With client_ca_file, a client without a certificate
// signed by one of its CAs fails the handshake.
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsOptions& options,
                                                               const TlsMaterial& material);

}  // namespace mpa::server
