#include "server/tls_credentials.h"

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace mpa::server {
namespace {

struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;

// "--flag=path: " for messages.
std::string Where(const char* flag, const std::string& path) {
  return absl::StrCat("--", flag, "=", path, ": ");
}

absl::StatusOr<std::string> ReadFile(const char* flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    const std::string message =
        absl::StrCat(Where(flag, path), "cannot read: ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(message);
    if (err == EACCES) return absl::PermissionDeniedError(message);
    return absl::InvalidArgumentError(message);
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat(Where(flag, path), "cannot read"));
  return text.str();
}

BioPtr MemoryBio(const std::string& text) {
  return BioPtr(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

// Every certificate of a PEM text, in order. InvalidArgument when there is none, or when a
// block that starts like a certificate does not parse (libcrypto's reasons are not quoted: they
// can carry pieces of the file).
absl::StatusOr<std::vector<X509Ptr>> ParseCertificates(const char* flag, const std::string& path,
                                                       const std::string& text) {
  std::vector<X509Ptr> certificates;
  BioPtr bio = MemoryBio(text);
  ERR_clear_error();
  for (;;) {
    X509Ptr certificate(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (certificate == nullptr) break;
    certificates.push_back(std::move(certificate));
  }
  // The loop ends at the first block it cannot read; running out of PEM blocks is the only
  // clean end.
  const unsigned long error = ERR_peek_last_error();
  const bool clean_end =
      ERR_GET_LIB(error) == ERR_LIB_PEM && ERR_GET_REASON(error) == PEM_R_NO_START_LINE;
  ERR_clear_error();
  if (certificates.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        Where(flag, path), "not a PEM certificate (no parsable \"BEGIN CERTIFICATE\" block)"));
  }
  if (!clean_end) {
    return absl::InvalidArgumentError(absl::StrCat(
        Where(flag, path), "certificate ", certificates.size() + 1, " of the file does not parse"));
  }
  return certificates;
}

// libcrypto must never ask a terminal for a passphrase: an encrypted key simply fails.
int NoPassphrase(char*, int, int, void*) { return -1; }

std::string SubjectOf(X509* certificate) {
  BioPtr out(BIO_new(BIO_s_mem()));
  X509_NAME_print_ex(out.get(), X509_get_subject_name(certificate), 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  const long size = BIO_get_mem_data(out.get(), &data);
  return std::string(data, size > 0 ? size : 0);
}

std::string TimeText(const ASN1_TIME* time) {
  BioPtr out(BIO_new(BIO_s_mem()));
  ASN1_TIME_print(out.get(), time);
  char* data = nullptr;
  const long size = BIO_get_mem_data(out.get(), &data);
  return std::string(data, size > 0 ? size : 0);
}

}  // namespace

absl::Status CheckTlsOptions(const TlsOptions& options) {
  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError(
        options.cert_file.empty()
            ? "--tls_key: set without --tls_cert; give both (TLS) or neither (plaintext)"
            : "--tls_cert: set without --tls_key; give both (TLS) or neither (plaintext)");
  }
  if (!options.client_ca_file.empty() && !options.enabled()) {
    return absl::InvalidArgumentError(
        "--tls_client_ca: needs --tls_cert and --tls_key (client certificates are checked only "
        "over TLS)");
  }
  if (options.reload_interval_s < 0 || options.reload_interval_s > kMaxTlsReloadIntervalSeconds) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls_reload_interval_s=", options.reload_interval_s, ": must be in [0, ",
                     kMaxTlsReloadIntervalSeconds, "] (0: read the files once)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<TlsMaterial> LoadTlsMaterial(const TlsOptions& options) {
  TlsMaterial material;
  absl::StatusOr<std::string> cert = ReadFile("tls_cert", options.cert_file);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadFile("tls_key", options.key_file);
  if (!key.ok()) return key.status();
  material.cert_pem = *std::move(cert);
  material.key_pem = *std::move(key);

  absl::StatusOr<std::vector<X509Ptr>> chain =
      ParseCertificates("tls_cert", options.cert_file, material.cert_pem);
  if (!chain.ok()) return chain.status();
  X509* leaf = chain->front().get();
  material.chain_certificates = static_cast<int>(chain->size());
  material.subject = SubjectOf(leaf);
  material.not_after = TimeText(X509_get0_notAfter(leaf));

  BioPtr key_bio = MemoryBio(material.key_pem);
  ERR_clear_error();
  PkeyPtr private_key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, NoPassphrase, nullptr));
  ERR_clear_error();
  if (private_key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(Where("tls_key", options.key_file),
                     "not an unencrypted PEM private key (no parsable \"BEGIN ... PRIVATE KEY\" "
                     "block)"));
  }
  if (X509_check_private_key(leaf, private_key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat(Where("tls_key", options.key_file),
                     "is not the key of the certificate in --tls_cert=", options.cert_file));
  }
  if (X509_cmp_current_time(X509_get0_notAfter(leaf)) <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        Where("tls_cert", options.cert_file), "the certificate expired on ", material.not_after));
  }

  if (!options.client_ca_file.empty()) {
    absl::StatusOr<std::string> cas = ReadFile("tls_client_ca", options.client_ca_file);
    if (!cas.ok()) return cas.status();
    material.client_ca_pem = *std::move(cas);
    absl::StatusOr<std::vector<X509Ptr>> roots =
        ParseCertificates("tls_client_ca", options.client_ca_file, material.client_ca_pem);
    if (!roots.ok()) return roots.status();
    material.client_cas = static_cast<int>(roots->size());
  }
  return material;
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsOptions& options,
                                                               const TlsMaterial& material) {
  const bool mutual = !options.client_ca_file.empty();
  if (options.reload_interval_s > 0) {
    using grpc::experimental::FileWatcherCertificateProvider;
    auto provider = std::make_shared<FileWatcherCertificateProvider>(
        options.key_file, options.cert_file, options.client_ca_file,
        static_cast<unsigned int>(options.reload_interval_s));
    grpc::experimental::TlsServerCredentialsOptions tls(provider);
    tls.watch_identity_key_cert_pairs();
    if (mutual) {
      tls.watch_root_certs();
      tls.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    } else {
      tls.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    }
    return grpc::experimental::TlsServerCredentials(tls);
  }
  grpc::SslServerCredentialsOptions ssl(
      mutual ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
             : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  ssl.pem_root_certs = material.client_ca_pem;
  ssl.pem_key_cert_pairs.push_back({material.key_pem, material.cert_pem});
  return grpc::SslServerCredentials(ssl);
}

}  // namespace mpa::server
