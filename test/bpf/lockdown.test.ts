// kernelMemoryLocked: which lockdown modes refuse bpf_probe_read_kernel, which ambpf_inpod_release needs.
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { kernelMemoryLocked } from '../../src/bpf/lockdown.ts';

t.test('only lockdown=confidentiality refuses kernel reads', async (t) => {
  const dir = t.testdir();
  const mode = (text: string): boolean => {
    const path = join(dir, 'lockdown');
    writeFileSync(path, text);
    return kernelMemoryLocked(path);
  };
  t.equal(mode('[none] integrity confidentiality\n'), false, 'none');
  t.equal(mode('none [integrity] confidentiality\n'), false, 'integrity allows bpf_probe_read_kernel');
  t.equal(mode('none integrity [confidentiality]\n'), true, 'confidentiality refuses it');
  t.equal(kernelMemoryLocked(join(dir, 'absent')), false, 'no lockdown LSM: nothing refused');
});
