// A real OIDC provider with its interactive login, for the portal's browser test:
// node portal_provider.mjs PORT KEYS.json REDIRECT_URI
// Client "portal" (secret "portal-secret") may use the code flow with PKCE and the given
// redirect URI; client "other" is a second application of the same IdP. Any login name
// signs in (oidc-provider's dev interactions); its groups are ["redcap-dev"], and the
// login "analyst" is in ["redcap-analysts"] instead.
import Provider from 'oidc-provider';
import fs from 'node:fs';

const [port, keyFile, redirectUri] = process.argv.slice(2);
const keys = JSON.parse(fs.readFileSync(keyFile, 'utf8')).keys;
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'portal',
      client_secret: 'portal-secret',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: [redirectUri],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'other',
      client_secret: 'other-secret',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: [redirectUri],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  jwks: { keys },
  pkce: { required: () => true },
  claims: { openid: ['sub'], profile: ['preferred_username', 'groups'] },
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: true } },
  findAccount: (ctx, id) => ({
    accountId: id,
    claims: () => ({
      sub: id,
      preferred_username: id,
      groups: id === 'analyst' ? ['redcap-analysts'] : ['redcap-dev'],
    }),
  }),
});
provider.proxy = false;
provider.listen(Number(port), '127.0.0.1', () => console.log(`ready ${issuer}`));
