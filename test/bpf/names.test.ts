// src/bpf/names.ts is the loader's one spelling of the objects' names: every name there is declared
// by the object it belongs to, and every map and program the objects declare is named there.
import t from 'tap';
import { BpfObject } from '../../src/libbpf/index.ts';
import { ensureObjects } from '../../src/bpf/build.ts';
import * as n from '../../src/bpf/names.ts';

function declared(path: string): { maps: Set<string>; programs: Set<string> } {
  const obj = BpfObject.open(path);
  try {
    // .bss, .rodata and friends are libbpf's, not ambpf's maps.
    return {
      maps: new Set(obj.maps.map((m) => m.name).filter((m) => !m.includes('.'))),
      programs: new Set(obj.programs.map((p) => p.name)),
    };
  } finally {
    obj.close();
  }
}

t.test('names.ts names exactly what the objects declare', async (t) => {
  const { objects } = await ensureObjects();
  const node = n.OBJECTS.map((o) => {
    const path = objects[o];
    if (!path) throw new Error(`object ${o} was not built`);
    return declared(path);
  });
  const inpodPath = objects[n.INPOD_OBJECT];
  if (!inpodPath) throw new Error(`object ${n.INPOD_OBJECT} was not built`);
  const inpod = declared(inpodPath);
  const nodeMaps = new Set(node.flatMap((o) => [...o.maps]));
  const nodePrograms = new Set(node.flatMap((o) => [...o.programs]));

  t.same([...nodeMaps].sort(), [...n.MAP_NAMES].sort(), 'the node objects declare the shared maps and no other');
  t.same(
    [...inpod.maps].sort(),
    [...n.MAP_NAMES, ...n.INPOD_MAP_NAMES].sort(),
    'the inpod object: shared + inpod maps',
  );
  for (const r of n.RETIRED_MAP_NAMES) t.notOk(nodeMaps.has(r) || inpod.maps.has(r), `${r} is retired`);

  const nodeNamed = [...Object.values(n.CGROUP_HOOKS), n.PROGRAMS.skmsg, n.PROGRAMS.tcPod, n.PROGRAMS.skLookup];
  t.same([...nodePrograms].sort(), nodeNamed.sort(), 'node programs: every one named in names.ts');
  const inpodNamed = [...Object.values(n.INPOD_CGROUP_HOOKS), n.PROGRAMS.inpodLookup, n.PROGRAMS.inpodNodeSyn];
  t.same([...inpod.programs].sort(), inpodNamed.sort(), 'inpod programs: every one named in names.ts');
  t.same(
    Object.keys(n.INPOD_CGROUP_HOOKS).sort(),
    [...Object.keys(n.CGROUP_HOOKS).filter((h) => h !== 'sockops'), ...n.INPOD_ONLY_HOOKS].sort(),
    'the inpod hooks are the node hooks but sockops, plus INPOD_ONLY_HOOKS',
  );
});
