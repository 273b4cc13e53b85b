// Writes a private RS256 JWKS with one key: node genkeys.mjs OUT.json KID
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';

const [out, kid] = process.argv.slice(2);
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
fs.writeFileSync(out, JSON.stringify({ keys: [jwk] }));
