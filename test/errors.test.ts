import t from 'tap';
import { errnoName, SystemError, describeError, MissingFeatureError } from '../src/errors.ts';

t.test('errnoName maps libc errnos and libbpf private codes', async (t) => {
  t.equal(errnoName(2), 'ENOENT');
  t.equal(errnoName(-1), 'EPERM');
  t.equal(errnoName(4007), 'LIBBPF_ERRNO__4007');
});

t.test('SystemError carries op, errno and code in its message', async (t) => {
  const e = new SystemError('open /x', 2, 'no such file');
  t.equal(e.errno, 2);
  t.equal(e.code, 'ENOENT');
  t.equal(describeError(e), 'open /x: no such file (ENOENT)');
});

t.test('MissingFeatureError names the kernel that brings the feature', async (t) => {
  t.match(new MissingFeatureError('tcx links', '6.6').message, /tcx links.*Linux 6\.6/);
});
