// A Fulcio / CT log / Rekor v1 stand-in for offline keyless signing tests, on 127.0.0.1.
//
// npm's @sigstore/mock does the cryptography (an ephemeral CA issuing certificates with an
// embedded SCT from a mock CT log, and a transparency log returning signed entry timestamps and
// inclusion proofs). This server adapts sigstore-python's requests to it:
//   * Fulcio: the OIDC token comes in the Authorization header, the CSR as base64 PEM; the token
//     is verified against the issuer's JWKS (the test's "kube-apiserver" key) and the SAN is
//     formed the way Fulcio does for Kubernetes issuers:
//     https://kubernetes.io/namespaces/<ns>/serviceaccounts/<sa>.
//   * Rekor: a proposed dsse entry is turned into the canonical body real Rekor stores
//     (payload hash, envelope hash, signatures with verifiers).
//   * OIDC discovery and JWKS for the issuer (model-signing fetches discovery while building
//     its signer even when a token is supplied). The issuer is this server, or the one given by
//     --issuer with its keys in --jwks (a test cluster's service-account issuer, which serves
//     no discovery where signers can reach it): the trust configuration points signers here.
// It writes the matching sigstore ClientTrustConfig to the path given by --trust-config and
// prints one JSON line {"url": ...} once it listens.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const path = require('path');

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]]);
    return acc;
  }, [])
);
const modules = args['node-modules'];
const req = (m) => require(path.join(modules, m));
const mock = req('@sigstore/mock');
const { generateKeyPair } = req('@sigstore/mock/dist/util/key');
const x509 = req('@peculiar/x509');
const jose = req('jose');

const jwks = JSON.parse(fs.readFileSync(args['jwks'], 'utf8'));

function b64url(buf) {
  return Buffer.from(buf).toString('base64url');
}

function k8sSubject(claims) {
  const k = claims['kubernetes.io'];
  if (k && k.namespace && k.serviceaccount && k.serviceaccount.name) {
    return `https://kubernetes.io/namespaces/${k.namespace}/serviceaccounts/${k.serviceaccount.name}`;
  }
  return claims.sub;
}

async function main() {
  const server = http.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${server.address().port}`;
  const issuer = args['issuer'] || base;

  const caKeys = generateKeyPair('prime256v1');
  const ctKeys = generateKeyPair('prime256v1');
  const tlogKeys = generateKeyPair('prime256v1');
  const ctlog = await mock.initializeCTLog(ctKeys);
  const ca = await mock.initializeCA(caKeys, ctlog);
  const tlog = await mock.initializeTLog(base, tlogKeys);
  const fulcio = mock.fulcioHandler(ca, { subjectClaim: 'studbook_subject' });
  const rekor = mock.rekorHandler(tlog);
  const keyset = jose.createLocalJWKSet(jwks);

  const spki = (k) => k.export({ format: 'der', type: 'spki' });
  const logId = (der) => crypto.createHash('sha256').update(der).digest('base64');
  const start = '2020-01-01T00:00:00Z';
  const pubKey = (der) => ({
    rawBytes: Buffer.from(der).toString('base64'),
    keyDetails: 'PKIX_ECDSA_P256_SHA_256',
    validFor: { start },
  });
  const service = (url) => ({ url, majorApiVersion: 1, validFor: { start }, operator: 'studbook-test' });
  const trustConfig = {
    mediaType: 'application/vnd.dev.sigstore.clienttrustconfig.v0.1+json',
    trustedRoot: {
      mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
      tlogs: [
        { baseUrl: base, hashAlgorithm: 'SHA2_256', publicKey: pubKey(spki(tlogKeys.publicKey)), logId: { keyId: logId(spki(tlogKeys.publicKey)) } },
      ],
      certificateAuthorities: [
        {
          subject: { organization: 'studbook-test', commonName: 'studbook-test' },
          uri: base,
          certChain: { certificates: [{ rawBytes: Buffer.from(ca.rootCertificate).toString('base64') }] },
          validFor: { start },
        },
      ],
      ctlogs: [
        { baseUrl: base, hashAlgorithm: 'SHA2_256', publicKey: pubKey(Buffer.from(ctlog.publicKey)), logId: { keyId: Buffer.from(ctlog.logID).toString('base64') } },
      ],
      timestampAuthorities: [],
    },
    signingConfig: {
      mediaType: 'application/vnd.dev.sigstore.signingconfig.v0.2+json',
      caUrls: [service(base)],
      oidcUrls: [service(base)],
      rekorTlogUrls: [service(base)],
      tsaUrls: [],
      rekorTlogConfig: { selector: 'ANY' },
      tsaConfig: { selector: 'ANY' },
    },
  };
  fs.writeFileSync(args['trust-config'], JSON.stringify(trustConfig, null, 2));

  async function signingCert(request, body) {
    const auth = request.headers['authorization'] || '';
    const token = auth.replace(/^Bearer\s+/i, '');
    let claims;
    try {
      ({ payload: claims } = await jose.jwtVerify(token, keyset, { issuer, audience: 'sigstore' }));
    } catch (e) {
      return { statusCode: 401, response: `invalid identity token: ${e.message}` };
    }
    const json = JSON.parse(body);
    const csrPem = Buffer.from(json.certificateSigningRequest, 'base64').toString('utf8');
    const csr = new x509.Pkcs10CertificateRequest(csrPem);
    const [h, , s] = token.split('.');
    const rewritten = `${h}.${b64url(JSON.stringify({ ...claims, studbook_subject: k8sSubject(claims) }))}.${s}`;
    const fulcioBody = {
      credentials: { oidcIdentityToken: rewritten },
      publicKeyRequest: { publicKey: { content: csr.publicKey.toString('pem') } },
    };
    return fulcio.fn(JSON.stringify(fulcioBody));
  }

  async function logEntry(body) {
    const proposed = JSON.parse(body);
    if (proposed.kind !== 'dsse') return rekor.fn(body);
    const content = proposed.spec.proposedContent;
    const envelope = JSON.parse(content.envelope);
    const sha = (b) => crypto.createHash('sha256').update(b).digest('hex');
    const canonical = {
      apiVersion: '0.0.1',
      kind: 'dsse',
      spec: {
        envelopeHash: { algorithm: 'sha256', value: sha(content.envelope) },
        payloadHash: { algorithm: 'sha256', value: sha(Buffer.from(envelope.payload, 'base64')) },
        signatures: envelope.signatures.map((sig) => ({ signature: sig.sig, verifier: content.verifiers[0] })),
      },
    };
    return rekor.fn(JSON.stringify(canonical));
  }

  server.on('request', (request, response) => {
    const chunks = [];
    request.on('data', (c) => chunks.push(c));
    request.on('end', async () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const url = new URL(request.url, base);
      let result;
      try {
        if (request.method === 'GET' && url.pathname === '/.well-known/openid-configuration') {
          result = {
            statusCode: 200,
            contentType: 'application/json',
            response: JSON.stringify({
              issuer,
              authorization_endpoint: `${base}/oauth2/auth`,
              token_endpoint: `${base}/oauth2/token`,
              jwks_uri: `${base}/openid/v1/jwks`,
              response_types_supported: ['id_token'],
              subject_types_supported: ['public'],
              id_token_signing_alg_values_supported: ['ES256', 'RS256'],
            }),
          };
        } else if (request.method === 'GET' && url.pathname === '/openid/v1/jwks') {
          result = { statusCode: 200, contentType: 'application/json', response: JSON.stringify(jwks) };
        } else if (request.method === 'POST' && url.pathname === '/api/v2/signingCert') {
          result = await signingCert(request, body);
        } else if (request.method === 'POST' && url.pathname === '/api/v1/log/entries') {
          result = await logEntry(body);
        } else {
          result = { statusCode: 404, response: 'not found' };
        }
      } catch (e) {
        result = { statusCode: 500, response: String(e && e.stack ? e.stack : e) };
      }
      response.writeHead(result.statusCode, { 'Content-Type': result.contentType || 'text/plain' });
      response.end(result.response);
    });
  });
  process.stdout.write(JSON.stringify({ url: base, issuer }) + '\n');
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + '\n');
  process.exit(1);
});
