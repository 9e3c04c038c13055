#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A synthetic hwloc XML topology (format v2) with NICs, for the mapper's tests: shapes the
real files in ../shared/topologies do not have (more than two nodes, a NIC on a node past
the first of its package, CPUs numbered past KEEL_MAX_CPUS).

gen_topo.py PACKAGES NODES_PER_PACKAGE CORES_PER_NODE SMT [--interleave] [--pu-offset N]
            [--nics NAME@WHERE,...] [--distances "D00 D01 ... Dnn"]
            [--allowed-cpus LIST] [--allowed-nodes LIST] [--no-memory LIST]
            [--offline-cpus LIST] > out.xml

--interleave numbers CPUs as Linux does on most x86 servers: every core's first thread,
  then every core's second, ... (without it a core's threads are consecutive).
--pu-offset N adds N to every CPU number.
--nics: WHERE is a NUMA node's number (the NIC hangs off that node's group), pkgN (off
  package N: local to all its nodes) or root (local to every CPU).
--distances: the NUMA latency matrix, row-major, one value per pair of nodes (hwloc's
  NUMALatency, as Linux's node distances give it); without it the file has none.
--allowed-cpus LIST: the CPUs the process that wrote the file could use (hwloc's
  allowed_cpuset, as a cgroup's cpuset makes it; "0-3,8"); without it, every CPU.
--allowed-nodes LIST: the NUMA nodes whose memory it could use (allowed_nodeset, a
  cgroup's cpuset.mems); without it, every node.
--no-memory LIST: NUMA nodes without memory of their own (CPUs only: local_memory 0).
--offline-cpus LIST: CPUs that were offline when the file was written: as hwloc writes
  them, in the complete cpusets only (no PU, and a core left with none is left out too),
  and not allowed.
"""
import argparse

ap = argparse.ArgumentParser()
ap.add_argument('pkg', type=int)
ap.add_argument('npp', type=int)
ap.add_argument('cpn', type=int)
ap.add_argument('smt', type=int)
ap.add_argument('--interleave', action='store_true')
ap.add_argument('--nics', default='eth0@0')
ap.add_argument('--pu-offset', type=int, default=0)
ap.add_argument('--distances', default='')
ap.add_argument('--allowed-cpus', default='')
ap.add_argument('--allowed-nodes', default='')
ap.add_argument('--no-memory', default='')
ap.add_argument('--offline-cpus', default='')
a = ap.parse_args()
ncores = a.pkg * a.npp * a.cpn
nnodes = a.pkg * a.npp


def bm(bits):
    if not bits:
        return "0x0"
    words = max(bits) // 32 + 1
    v = [0] * words
    for b in bits:
        v[b // 32] |= 1 << (b % 32)
    return ",".join("0x%08x" % w for w in reversed(v))


def pu_os(core, t):
    if a.interleave:
        return a.pu_offset + t * ncores + core
    return a.pu_offset + core * a.smt + t


gp = [100]


def g():
    gp[0] += 1
    return gp[0]


nics = {}
for spec in a.nics.split(','):
    name, where = spec.split('@')
    nics.setdefault(where, []).append(name)
bus = [0x10]


def io(where, ind):
    out = []
    for n in nics.get(where, []):
        b = bus[0]
        bus[0] += 1
        out.append(f'{ind}<object type="Bridge" gp_index="{g()}" bridge_type="0-1" depth="0" '
                   f'bridge_pci="0000:[{b:02x}-{b:02x}]">')
        out.append(f'{ind}  <object type="PCIDev" gp_index="{g()}" pci_busid="0000:{b:02x}:00.0" '
                   f'pci_type="0200 [8086:1521] [0000:0000] 01" pci_link_speed="0.000000">')
        out.append(f'{ind}    <object type="OSDev" gp_index="{g()}" name="{n}" osdev_type="2"/>')
        out.append(f'{ind}  </object>')
        out.append(f'{ind}</object>')
    return out


def sets(cpus, nodes):
    online = [c for c in cpus if c not in offline]
    return (f'cpuset="{bm(online)}" complete_cpuset="{bm(cpus)}" nodeset="{bm(nodes)}" '
            f'complete_nodeset="{bm(nodes)}"')


allpus = [pu_os(c, t) for c in range(ncores) for t in range(a.smt)]
allnodes = list(range(nnodes))


def cpulist(text):
    out = []
    for part in text.split(','):
        lo, _, hi = part.partition('-')
        out += range(int(lo), int(hi or lo) + 1)
    return out


offline = cpulist(a.offline_cpus) if a.offline_cpus else []
allowed = [c for c in (cpulist(a.allowed_cpus) if a.allowed_cpus else allpus)
           if c not in offline]
allowed_nodes = cpulist(a.allowed_nodes) if a.allowed_nodes else allnodes
no_memory = cpulist(a.no_memory) if a.no_memory else []
L = ['<?xml version="1.0" encoding="UTF-8"?>', '<!DOCTYPE topology SYSTEM "hwloc2.dtd">',
     '<topology version="2.0">',
     f'<object type="Machine" os_index="0" {sets(allpus, allnodes)} '
     f'allowed_cpuset="{bm(allowed)}" allowed_nodeset="{bm(allowed_nodes)}" gp_index="1">']
for p in range(a.pkg):
    nodes = [p * a.npp + i for i in range(a.npp)]
    pcores = range(p * a.npp * a.cpn, (p + 1) * a.npp * a.cpn)
    ppus = [pu_os(c, t) for c in pcores for t in range(a.smt)]
    L.append(f' <object type="Package" os_index="{p}" {sets(ppus, nodes)} gp_index="{g()}">')
    for ni in range(a.npp):
        nd = p * a.npp + ni
        ncs = range(nd * a.cpn, (nd + 1) * a.cpn)
        npus = [pu_os(c, t) for c in ncs for t in range(a.smt)]
        ind = '  '
        if a.npp > 1:
            L.append(f'  <object type="Group" {sets(npus, [nd])} gp_index="{g()}" kind="1001" '
                     f'subkind="0">')
            ind = '   '
        L.append(f'{ind}<object type="NUMANode" os_index="{nd}" {sets(npus, [nd])} '
                 f'gp_index="{g()}" local_memory="{0 if nd in no_memory else 68719476736}"/>')
        for c in ncs:
            cp = [pu_os(c, t) for t in range(a.smt)]
            if all(o in offline for o in cp):
                continue
            L.append(f'{ind}<object type="Core" os_index="{c}" {sets(cp, [nd])} gp_index="{g()}">')
            for t in range(a.smt):
                o = pu_os(c, t)
                if o in offline:
                    continue
                L.append(f'{ind} <object type="PU" os_index="{o}" {sets([o], [nd])} '
                         f'gp_index="{g()}"/>')
            L.append(f'{ind}</object>')
        L += io(str(nd), ind)
        if a.npp > 1:
            L.append('  </object>')
    L += io('pkg%d' % p, '  ')
    L.append(' </object>')
L += io('root', ' ')
L.append('</object>')
if a.distances:
    vals = a.distances.split()
    if len(vals) != nnodes * nnodes:
        raise SystemExit(f'--distances: {len(vals)} values for {nnodes} nodes '
                         f'({nnodes * nnodes} wanted)')
    idx = ''.join(f'{n} ' for n in allnodes)
    val = ''.join(f'{v} ' for v in vals)
    L.append(f'<distances2 type="NUMANode" nbobjs="{nnodes}" kind="5" name="NUMALatency" '
             f'indexing="os">')
    L.append(f' <indexes length="{len(idx)}">{idx}</indexes>')
    L.append(f' <u64values length="{len(val)}">{val}</u64values>')
    L.append('</distances2>')
L.append('</topology>')
print("\n".join(L))
