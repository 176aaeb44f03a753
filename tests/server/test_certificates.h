// Test helper: certificate authorities and the certificates they sign, made at test time with
// libcrypto (P-256 keys, SHA-256 signatures), so no key material is committed and nothing
// expires in the repository. A TestCa signs server certificates (serverAuth, with DNS and IP
// subject alternative names) and client certificates (clientAuth); TlsTestFiles writes a
// complete set to files for the binaries' flags; TlsChannel connects to a TLS server.
#pragma once

#include <grpcpp/grpcpp.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace mpa::server::testing {

struct PkeyDeleter {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
using PkeyHandle = std::unique_ptr<EVP_PKEY, PkeyDeleter>;
using X509Handle = std::unique_ptr<X509, X509Deleter>;

// A key and a certificate, with their PEM texts.
struct Issued {
  PkeyHandle key;
  X509Handle cert;
  std::string key_pem;
  std::string cert_pem;
};

inline std::string KeyPem(EVP_PKEY* key) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  std::string pem(data, size);
  BIO_free(bio);
  return pem;
}

inline std::string CertPem(X509* cert) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(bio, cert);
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  std::string pem(data, size);
  BIO_free(bio);
  return pem;
}

// Adds an extension written in openssl.cnf syntax (e.g. "critical,CA:TRUE").
inline void AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX context;
  X509V3_set_ctx(&context, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* extension = X509V3_EXT_conf_nid(nullptr, &context, nid, value.c_str());
  ASSERT_NE(extension, nullptr) << "extension " << nid << " = " << value;
  X509_add_ext(cert, extension, -1);
  X509_EXTENSION_free(extension);
}

struct CertOptions {
  std::string common_name = {};
  std::vector<std::string> subject_alt_names = {};  // "DNS:localhost", "IP:127.0.0.1"
  bool server = false;                              // serverAuth, else clientAuth
  long not_before_s = -3600;                        // relative to now
  long not_after_s = 7 * 24 * 3600;
};

// A self-signed certificate authority.
class TestCa {
 public:
  explicit TestCa(const std::string& name) {
    ca_.key.reset(EVP_EC_gen("P-256"));
    ca_.cert = NewCert(name, ca_.key.get(), -3600, 30 * 24 * 3600);
    X509_set_issuer_name(ca_.cert.get(), X509_get_subject_name(ca_.cert.get()));
    AddExtension(ca_.cert.get(), ca_.cert.get(), NID_basic_constraints, "critical,CA:TRUE");
    AddExtension(ca_.cert.get(), ca_.cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign");
    AddExtension(ca_.cert.get(), ca_.cert.get(), NID_subject_key_identifier, "hash");
    X509_sign(ca_.cert.get(), ca_.key.get(), EVP_sha256());
    ca_.key_pem = KeyPem(ca_.key.get());
    ca_.cert_pem = CertPem(ca_.cert.get());
  }

  const std::string& cert_pem() const { return ca_.cert_pem; }

  Issued Issue(const CertOptions& options) const {
    Issued out;
    out.key.reset(EVP_EC_gen("P-256"));
    out.cert =
        NewCert(options.common_name, out.key.get(), options.not_before_s, options.not_after_s);
    X509* cert = out.cert.get();
    X509_set_issuer_name(cert, X509_get_subject_name(ca_.cert.get()));
    AddExtension(cert, ca_.cert.get(), NID_basic_constraints, "critical,CA:FALSE");
    AddExtension(cert, ca_.cert.get(), NID_key_usage, "critical,digitalSignature,keyEncipherment");
    AddExtension(cert, ca_.cert.get(), NID_ext_key_usage,
                 options.server ? "serverAuth" : "clientAuth");
    AddExtension(cert, ca_.cert.get(), NID_authority_key_identifier, "keyid:always");
    if (!options.subject_alt_names.empty()) {
      std::string names;
      for (const std::string& name : options.subject_alt_names) {
        absl::StrAppend(&names, names.empty() ? "" : ",", name);
      }
      AddExtension(cert, ca_.cert.get(), NID_subject_alt_name, names);
    }
    X509_sign(cert, ca_.key.get(), EVP_sha256());
    out.key_pem = KeyPem(out.key.get());
    out.cert_pem = CertPem(cert);
    return out;
  }

 private:
  static X509Handle NewCert(const std::string& common_name, EVP_PKEY* key, long not_before_s,
                            long not_after_s) {
    static long serial = 1;
    X509Handle cert(X509_new());
    X509_set_version(cert.get(), 2);  // v3
    ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial++);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), not_before_s);
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), not_after_s);
    X509_set_pubkey(cert.get(), key);
    X509_NAME* name = X509_get_subject_name(cert.get());
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("multipole tests"), -1, -1,
                               0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1,
                               0);
    return cert;
  }

  Issued ca_;
};

// Writes `text` to `path` (replacing it atomically: written beside it, then renamed, as a
// certificate rotation should be).
inline void WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string temporary = path + ".new";
  { std::ofstream(temporary, std::ios::binary) << text; }
  ASSERT_EQ(std::rename(temporary.c_str(), path.c_str()), 0) << path;
}

// A CA, a server certificate for localhost / 127.0.0.1 it signed, a client certificate it
// signed, and a client certificate of an unrelated CA, written as PEM files under the test's
// temporary folder (removed with the object).
class TlsTestFiles {
 public:
  explicit TlsTestFiles(const std::string& tag)
      : prefix_(absl::StrCat(::testing::TempDir(), "/", tag, "_", getpid(), "_")),
        ca_("multipole test CA"),
        other_ca_("unrelated test CA") {
    server_ = ca_.Issue({.common_name = "mpa-server",
                         .subject_alt_names = {"DNS:localhost", "IP:127.0.0.1"},
                         .server = true});
    client_ = ca_.Issue({.common_name = "mpa-client"});
    stranger_ = other_ca_.Issue({.common_name = "mpa-stranger"});
    Write("ca.pem", ca_.cert_pem());
    Write("other_ca.pem", other_ca_.cert_pem());
    Write("server.pem", server_.cert_pem);
    Write("server.key", server_.key_pem);
    Write("client.pem", client_.cert_pem);
    Write("client.key", client_.key_pem);
    Write("stranger.pem", stranger_.cert_pem);
    Write("stranger.key", stranger_.key_pem);
  }
  ~TlsTestFiles() {
    for (const std::string& path : written_) std::remove(path.c_str());
  }
  TlsTestFiles(const TlsTestFiles&) = delete;
  TlsTestFiles& operator=(const TlsTestFiles&) = delete;

  // The path of one of the files above ("ca.pem", "server.key", ...) or of a new one.
  std::string Path(const std::string& name) const { return prefix_ + name; }
  // Writes (atomically) and remembers a file to remove.
  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = Path(name);
    WriteFileAtomically(path, text);
    written_.push_back(path);
    return path;
  }

  const TestCa& ca() const { return ca_; }
  const TestCa& other_ca() const { return other_ca_; }
  const Issued& server() const { return server_; }
  const Issued& client() const { return client_; }
  const Issued& stranger() const { return stranger_; }

  // mpa_server flags for TLS, with mutual TLS (client certificates of ca()) when `mutual`.
  std::vector<std::string> ServerFlags(bool mutual) const {
    std::vector<std::string> flags = {absl::StrCat("--tls_cert=", Path("server.pem")),
                                      absl::StrCat("--tls_key=", Path("server.key"))};
    if (mutual) flags.push_back(absl::StrCat("--tls_client_ca=", Path("ca.pem")));
    return flags;
  }

 private:
  std::string prefix_;
  std::vector<std::string> written_;
  TestCa ca_;
  TestCa other_ca_;
  Issued server_;
  Issued client_;
  Issued stranger_;
};

// A TLS channel to `target` trusting `roots` (PEM), presenting `identity`'s certificate when
// given, and expecting `server_name` in the server's certificate instead of the target's host
// when that is not empty.
inline std::shared_ptr<grpc::Channel> TlsChannel(const std::string& target,
                                                 const std::string& roots,
                                                 const Issued* identity = nullptr,
                                                 const std::string& server_name = "") {
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = roots;
  if (identity != nullptr) {
    ssl.pem_private_key = identity->key_pem;
    ssl.pem_cert_chain = identity->cert_pem;
  }
  grpc::ChannelArguments arguments;
  if (!server_name.empty()) arguments.SetSslTargetNameOverride(server_name);
  return grpc::CreateCustomChannel(target, grpc::SslCredentials(ssl), arguments);
}

}  // namespace mpa::server::testing
