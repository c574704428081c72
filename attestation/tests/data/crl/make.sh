#!/usr/bin/env bash
# Makes the CRL test fixtures with OpenSSL, an implementation independent of Veil's:
# a self-signed RSA-2048 "ARK-Test" (RSA-PSS, SHA-384, salt 48: how AMD signs), a
# certificate "SEV-Test" with serial 0x2A under it, and a CRL by ARK-Test that revokes
# it (a version 2 CRL, and the same as version 1); and a forged CRL that names AMD's ARK-Milan (its exact name) as issuer but is signed
# by another RSA key, which a verifier must refuse. The private keys stay in a temporary directory and are deleted: the fixtures can
# only be verified, never extended. Run from anywhere; it writes next to itself.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
pss=(-sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:48 -sigopt rsa_mgf1_md:sha384)
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out ark.key 2>/dev/null
openssl req -x509 -new -key ark.key -subj "/CN=ARK-Test/O=Veil test fixture (not AMD)" \
  -days 36500 -sha384 "${pss[@]}" -set_serial 1 -out ark.pem
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -keyout ask.key \
  -subj "/CN=SEV-Test" -out ask.csr 2>/dev/null
openssl x509 -req -in ask.csr -CA ark.pem -CAkey ark.key -set_serial 42 -days 36500 \
  -sha384 "${pss[@]}" -out ask.pem 2>/dev/null
touch index.txt
echo 01 >crlnumber
cat >ca.cnf <<'CNF'
[ca]
default_ca = t
[t]
database = index.txt
crlnumber = crlnumber
default_md = sha384
default_crl_days = 36500
certificate = ark.pem
private_key = ark.key
CNF
openssl ca -config ca.cnf -revoke ask.pem -crl_reason keyCompromise 2>/dev/null
openssl ca -config ca.cnf -gencrl -md sha384 "${pss[@]}" -out crl.pem 2>/dev/null
openssl crl -in crl.pem -outform DER -out crl.der
# The same revocation in a version 1 CRL (no CRL number, no extensions, no version field).
touch index1.txt
sed -e 's|= index.txt|= index1.txt|' -e '/^crlnumber/d' ca.cnf >ca1.cnf
openssl ca -config ca1.cnf -revoke ask.pem 2>/dev/null
openssl ca -config ca1.cnf -gencrl -md sha384 "${pss[@]}" -out crl1.pem 2>/dev/null
openssl crl -in crl1.pem -outform DER -out "$here/crl-test-v1.der"
# The forgery: a self-signed certificate with ARK-Milan's name, and its (empty) CRL.
mkdir forged
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out forged/ark.key 2>/dev/null
openssl req -x509 -new -key forged/ark.key -days 36500 -sha384 "${pss[@]}" -set_serial 1 \
  -subj "/OU=Engineering/C=US/L=Santa Clara/ST=CA/O=Advanced Micro Devices/CN=ARK-Milan" \
  -out forged/ark.pem
touch forged/index.txt
echo 01 >forged/crlnumber
sed -e 's|= index.txt|= forged/index.txt|' -e 's|= crlnumber|= forged/crlnumber|' \
  -e 's|= ark.pem|= forged/ark.pem|' -e 's|= ark.key|= forged/ark.key|' ca.cnf >forged/ca.cnf
openssl ca -config forged/ca.cnf -gencrl -md sha384 "${pss[@]}" -out forged/crl.pem 2>/dev/null
openssl crl -in forged/crl.pem -outform DER -out "$here/crl-forged-milan.der"
cp ark.pem "$here/ark-test.pem"
cp ask.pem "$here/ask-test.pem"
cp crl.pem "$here/crl-test.pem"
cp crl.der "$here/crl-test.der"
