// A kernel's major.minor from its release string ("5.10.0-46-amd64" -> [5, 10]), and the comparison
// every version gate uses: the loader's (features with no cheap probe) and the kernel matrix's known
// answers. Pure, so the matrix tooling does not load the libbpf binding to read a version.

export type KernelVersion = readonly [number, number];

/** major.minor of a release string; undefined when it has none (a guest that never said). */
export function kernelVersion(release: string | undefined): KernelVersion | undefined {
  const m = /^(\d+)\.(\d+)/.exec(release ?? '');
  return m ? [Number(m[1]), Number(m[2])] : undefined;
}

export function versionAtLeast(v: KernelVersion, major: number, minor: number): boolean {
  return v[0] > major || (v[0] === major && v[1] >= minor);
}
