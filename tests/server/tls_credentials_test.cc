#include "server/tls_credentials.h"

#include <cstdio>
#include <string>
#include <utility>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/test_certificates.h"

namespace mpa::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::TlsTestFiles;

TlsOptions Tls(std::string cert, std::string key, std::string client_ca = "",
               int reload_interval_s = 600) {
  TlsOptions options;
  options.cert_file = std::move(cert);
  options.key_file = std::move(key);
  options.client_ca_file = std::move(client_ca);
  options.reload_interval_s = reload_interval_s;
  return options;
}

TEST(CheckTlsOptionsTest, CombinationsOfFlags) {
  EXPECT_TRUE(CheckTlsOptions(Tls("", "")).ok());
  EXPECT_TRUE(CheckTlsOptions(Tls("c", "k")).ok());
  EXPECT_TRUE(CheckTlsOptions(Tls("c", "k", "ca")).ok());
  EXPECT_TRUE(CheckTlsOptions(Tls("c", "k", "", 0)).ok());
  EXPECT_TRUE(CheckTlsOptions(Tls("c", "k", "", 86400)).ok());

  const absl::Status no_key = CheckTlsOptions(Tls("c", ""));
  EXPECT_EQ(no_key.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_key.message(), HasSubstr("--tls_cert: set without --tls_key"));
  EXPECT_THAT(CheckTlsOptions(Tls("", "k")).message(),
              HasSubstr("--tls_key: set without --tls_cert"));
  EXPECT_THAT(CheckTlsOptions(Tls("", "", "ca")).message(),
              HasSubstr("--tls_client_ca: needs --tls_cert and --tls_key"));
  EXPECT_THAT(CheckTlsOptions(Tls("c", "k", "", -1)).message(),
              HasSubstr("--tls_reload_interval_s=-1"));
  EXPECT_FALSE(CheckTlsOptions(Tls("c", "k", "", 86401)).ok());
}

class LoadTlsMaterialTest : public ::testing::Test {
 protected:
  TlsTestFiles files_{"tls_credentials_test"};
  TlsOptions Options(bool mutual) const {
    return Tls(files_.Path("server.pem"), files_.Path("server.key"),
               mutual ? files_.Path("ca.pem") : "");
  }
};

TEST_F(LoadTlsMaterialTest, GoodFilesLoad) {
  absl::StatusOr<TlsMaterial> material = LoadTlsMaterial(Options(true));
  ASSERT_TRUE(material.ok()) << material.status();
  EXPECT_EQ(material->cert_pem, files_.server().cert_pem);
  EXPECT_EQ(material->key_pem, files_.server().key_pem);
  EXPECT_EQ(material->client_ca_pem, files_.ca().cert_pem());
  EXPECT_THAT(material->subject, HasSubstr("CN=mpa-server"));
  EXPECT_THAT(material->not_after, HasSubstr("GMT"));
  EXPECT_EQ(material->chain_certificates, 1);
  EXPECT_EQ(material->client_cas, 1);

  // A chain (server certificate, then its CA) and a bundle of two CAs.
  TlsOptions options = Options(true);
  options.cert_file =
      files_.Write("chain.pem", files_.server().cert_pem + "\n" + files_.ca().cert_pem());
  options.client_ca_file =
      files_.Write("bundle.pem", files_.ca().cert_pem() + files_.other_ca().cert_pem());
  material = LoadTlsMaterial(options);
  ASSERT_TRUE(material.ok()) << material.status();
  EXPECT_EQ(material->chain_certificates, 2);
  EXPECT_EQ(material->client_cas, 2);
  EXPECT_TRUE(MakeServerCredentials(options, *material) != nullptr);
  options.reload_interval_s = 0;
  EXPECT_TRUE(MakeServerCredentials(options, *material) != nullptr);
}

TEST_F(LoadTlsMaterialTest, UnreadableFilesAreNamed) {
  const std::string missing = files_.Path("missing.pem");
  TlsOptions options = Options(true);
  options.cert_file = missing;
  absl::Status status = LoadTlsMaterial(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("--tls_cert=" + missing + ": cannot read"));

  options = Options(true);
  options.key_file = missing;
  EXPECT_THAT(LoadTlsMaterial(options).status().message(), HasSubstr("--tls_key=" + missing));
  options = Options(true);
  options.client_ca_file = missing;
  EXPECT_THAT(LoadTlsMaterial(options).status().message(), HasSubstr("--tls_client_ca=" + missing));
  // A folder opens but cannot be read.
  options = Options(false);
  options.cert_file = ::testing::TempDir();
  EXPECT_FALSE(LoadTlsMaterial(options).ok());
}

TEST_F(LoadTlsMaterialTest, GarbageIsRefusedWithoutQuotingIt) {
  const std::string garbage = files_.Write("garbage.pem", "secret-looking text, not PEM\n");
  // A block that claims to be a certificate but holds no valid DER.
  const std::string broken = files_.Write("broken.pem",
                                          "-----BEGIN CERTIFICATE-----\nAAAAsecretAAAA\n"
                                          "-----END CERTIFICATE-----\n");
  for (const std::string& bad : {garbage, broken}) {
    TlsOptions options = Options(true);
    options.cert_file = bad;
    absl::Status status = LoadTlsMaterial(options).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(status.message(), HasSubstr("--tls_cert=" + bad + ": not a PEM certificate"));
    EXPECT_THAT(status.message(), Not(HasSubstr("secret")));

    options = Options(true);
    options.key_file = bad;
    status = LoadTlsMaterial(options).status();
    EXPECT_THAT(status.message(), HasSubstr("--tls_key=" + bad + ": not an unencrypted PEM"));
    EXPECT_THAT(status.message(), Not(HasSubstr("secret")));

    options = Options(true);
    options.client_ca_file = bad;
    EXPECT_THAT(LoadTlsMaterial(options).status().message(),
                HasSubstr("--tls_client_ca=" + bad + ": not a PEM certificate"));
  }
  // A good certificate followed by a broken one.
  TlsOptions options = Options(false);
  options.cert_file = files_.Write("half.pem", files_.server().cert_pem +
                                                   "-----BEGIN CERTIFICATE-----\nAAAA\n"
                                                   "-----END CERTIFICATE-----\n");
  EXPECT_THAT(LoadTlsMaterial(options).status().message(),
              HasSubstr("certificate 2 of the file does not parse"));
  // A key where the certificate belongs, and the other way round.
  options = Options(false);
  std::swap(options.cert_file, options.key_file);
  EXPECT_THAT(LoadTlsMaterial(options).status().message(), HasSubstr("--tls_cert="));
}

TEST_F(LoadTlsMaterialTest, KeyMustMatchTheCertificate) {
  TlsOptions options = Options(false);
  options.key_file = files_.Path("client.key");
  const absl::Status status = LoadTlsMaterial(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr("is not the key of the certificate in --tls_cert=" + options.cert_file));
}

TEST_F(LoadTlsMaterialTest, EncryptedKeyIsRefusedWithoutAPrompt) {
  BIO* bio = BIO_new(BIO_s_mem());
  const char passphrase[] = "correct horse battery";
  ASSERT_EQ(PEM_write_bio_PKCS8PrivateKey(bio, files_.server().key.get(), EVP_aes_256_cbc(),
                                          passphrase, sizeof(passphrase) - 1, nullptr, nullptr),
            1);
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  TlsOptions options = Options(false);
  options.key_file = files_.Write("encrypted.key", std::string(data, size));
  BIO_free(bio);
  EXPECT_THAT(LoadTlsMaterial(options).status().message(),
              HasSubstr("not an unencrypted PEM private key"));
}

TEST_F(LoadTlsMaterialTest, ExpiredCertificateIsRefused) {
  testing::Issued expired = files_.ca().Issue({.common_name = "expired",
                                               .subject_alt_names = {"DNS:localhost"},
                                               .server = true,
                                               .not_before_s = -7200,
                                               .not_after_s = -3600});
  TlsOptions options;
  options.cert_file = files_.Write("expired.pem", expired.cert_pem);
  options.key_file = files_.Write("expired.key", expired.key_pem);
  EXPECT_THAT(LoadTlsMaterial(options).status().message(),
              HasSubstr("the certificate expired on "));
}

}  // namespace
}  // namespace mpa::server
