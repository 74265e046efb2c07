// The test CA for HBONE, made with the openssl CLI at testbed start: a self-signed CA and one leaf
// certificate (SPIFFE identity of ztunnel) that every stand-in presents and requires from its peer.
// Keys are throwaway (1 day, in the run dir, removed by down()).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../run.ts';

export const ZTUNNEL_SPIFFE_ID = 'spiffe://cluster.local/ns/istio-system/sa/ztunnel';

export interface Pki {
  readonly caCert: string;
  readonly cert: string;
  readonly key: string;
}

export function pkiPaths(dir: string): Pki {
  return { caCert: join(dir, 'ca.crt'), cert: join(dir, 'ztunnel.crt'), key: join(dir, 'ztunnel.key') };
}

export async function makePki(dir: string): Promise<Pki> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const p = pkiPaths(dir);
  const caKey = join(dir, 'ca.key');
  const csr = join(dir, 'ztunnel.csr');
  const ext = join(dir, 'ztunnel.ext');
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await run([
    'openssl',
    'req',
    '-x509',
    ...ec,
    '-keyout',
    caKey,
    '-out',
    p.caCert,
    '-days',
    '1',
    '-subj',
    '/O=ambpf testbed/CN=ambtb test CA',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  await run(['openssl', 'req', '-new', ...ec, '-keyout', p.key, '-out', csr, '-subj', '/O=cluster.local/CN=ztunnel']);
  writeFileSync(
    ext,
    `subjectAltName=URI:${ZTUNNEL_SPIFFE_ID},DNS:ztunnel.istio-system\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n`,
  );
  await run([
    'openssl',
    'x509',
    '-req',
    '-in',
    csr,
    '-CA',
    p.caCert,
    '-CAkey',
    caKey,
    '-CAcreateserial',
    '-days',
    '1',
    '-out',
    p.cert,
    '-extfile',
    ext,
  ]);
  return p;
}
