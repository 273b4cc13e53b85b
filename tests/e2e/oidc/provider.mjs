// A real OIDC provider for the tests: node provider.mjs PORT KEYS.json [KEYS2.json ...]
// Signs with the first key; publishes all. Client "pipeline" may use client_credentials and
// receives RS256 JWT access tokens (RFC 9068) for the resource "urn:redcap-gateway".
import Provider from 'oidc-provider';
import fs from 'node:fs';

const [port, ...keyFiles] = process.argv.slice(2);
const keys = keyFiles.flatMap((f) => JSON.parse(fs.readFileSync(f, 'utf8')).keys);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'pipeline',
      client_secret: 'pipeline-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
    },
  ],
  jwks: { keys },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:redcap-gateway',
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'redcap',
        audience: 'redcap-gateway',
        accessTokenTTL: 3600,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  extraTokenClaims: (ctx, token) => ({
    preferred_username: `svc-${token.clientId}`,
    groups: ['redcap-dev'],
  }),
});
provider.proxy = false;
provider.listen(Number(port), '127.0.0.1', () => console.log(`ready ${issuer}`));
