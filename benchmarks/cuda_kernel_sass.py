"""What the CUDA matching kernels execute, counted in their machine code.

    python benchmarks/cuda_kernel_sass.py                  # sm_90
    python benchmarks/cuda_kernel_sass.py --arch 80 --json sass.json

No GPU needed. The CUDA unit is compiled to a cubin for one architecture
with the flags a CUDA build gives it (``compile_cuda_sources``, plus
``-Xptxas=-v`` for each kernel's registers and spills), disassembled by
``nvdisasm`` (the CUDA toolkit's, or the ``nvidia-cuda-nvdisasm`` wheel's),
and for every configuration of ``topk_window_kernel`` the table gives its
registers, spills and scoring loop: the loop where its scoring opcode
(``HMMA`` on tensor cores, ``FFMA``/``DFMA`` on CUDA cores) is densest. On
tensor cores that loop is one channel slice of a chunk where every slice
is whole and aligned (C = 256 or 1280), and each warp runs its body once
per slice, so its instructions are what a warp issues per slice: the mma,
the shared-memory loads of their operands, the tile's fill (global loads,
TF32 split, shared stores) and the rest. On CUDA cores it is the loop over
a slice's channels, four at a time. A static count, not a timing: the
GPU's own figures are Nsight Compute's (``benchmarks/cuda_sanitize.py
--profile``).
"""
import argparse
import collections
import glob
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

#: The unit that holds the kernels.
CUDA_UNIT = 'cuda/topk_window_match_cuda.cu'
KERNEL = 'topk_window_kernel'
#: Opcode (before its first dot) -> column of the table.
CATEGORIES = {
    'HMMA': 'math', 'FFMA': 'math', 'DFMA': 'math',
    'LDS': 'shared loads', 'LDSM': 'shared loads',
    'STS': 'shared stores',
    'LDG': 'global loads',
    'LDL': 'local (spills)', 'STL': 'local (spills)',
    'BAR': 'barriers',
}
COLUMNS = ('math', 'shared loads', 'global loads', 'shared stores',
           'local (spills)', 'barriers', 'other')
SCORING = ('HMMA', 'FFMA', 'DFMA')

FUNCTION = re.compile(r'^\s*\.text\.(\S+):\s*$')
LABEL = re.compile(r'^\s*(\.L_x_\d+):\s*$')
INSTRUCTION = re.compile(r'^\s*/\*([0-9a-f]+)\*/\s+([^;]*);')
BRANCH_TARGET = re.compile(r'\bBRA\b.*`\((\.L_x_\d+)\)')
PREDICATE = re.compile(r'^@!?U?P\w+\s+')


def opcode(instruction: str) -> str:
    """The opcode of one SASS instruction, predicate dropped
    (``@!P2 LDG.E.128 R4, ...`` -> ``LDG.E.128``)."""
    text = PREDICATE.sub('', instruction.strip())
    return text.split()[0] if text else ''


def category(op: str) -> str:
    return CATEGORIES.get(op.split('.')[0], 'other')


def parse_functions(sass: str) -> Dict[str, Tuple[List[str], Dict[str, int]]]:
    """nvdisasm's listing -> {mangled name: (instructions, label -> index
    of the instruction it precedes)}."""
    functions = {}
    current = None
    for line in sass.splitlines():
        match = FUNCTION.match(line)
        if match:
            current = functions.setdefault(match.group(1), ([], {}))
            continue
        if current is None:
            continue
        match = LABEL.match(line)
        if match:
            current[1][match.group(1)] = len(current[0])
            continue
        match = INSTRUCTION.match(line)
        if match:
            current[0].append(match.group(2).strip())
    return functions


def loops(instructions: List[str],
          labels: Dict[str, int]) -> List[Tuple[int, int]]:
    """Every backward branch's [target, branch] span of instructions."""
    spans = []
    for end, text in enumerate(instructions):
        match = BRANCH_TARGET.search(text)
        if match and labels.get(match.group(1), end + 1) <= end:
            spans.append((labels[match.group(1)], end))
    return spans


def scoring_loop(instructions: List[str],
                 labels: Dict[str, int]) -> Optional[dict]:
    """The kernel's scoring loop: of the loops holding its scoring opcode
    (HMMA where it has any, else the more frequent of FFMA and DFMA), the
    one where that opcode is densest (the softmax's exp has FFMAs too, in
    a loop of its own; a loop around the scoring loop has the same ones
    and more else), the smaller on a tie. Its length and its instructions
    by column; None without one."""
    ops = [opcode(t) for t in instructions]
    kinds = collections.Counter(op.split('.')[0] for op in ops
                                if op.split('.')[0] in SCORING)
    if not kinds:
        return None
    main = 'HMMA' if kinds['HMMA'] else kinds.most_common(1)[0][0]
    best, best_key = None, None
    for start, end in loops(instructions, labels):
        body = ops[start:end + 1]
        scoring = sum(op.split('.')[0] == main for op in body)
        if not scoring:
            continue
        key = (scoring / len(body), -len(body))
        if best_key is None or key > best_key:
            counts = collections.Counter(category(op) for op in body)
            best = dict(instructions=len(body), scoring_opcode=main,
                        **{c: counts.get(c, 0) for c in COLUMNS})
            best_key = key
    return best


def parse_ptxas(log: str) -> Dict[str, dict]:
    """``ptxas -v`` output -> {mangled name: registers and spill bytes}."""
    usage = {}
    current = None
    for line in log.splitlines():
        match = re.search(r"Compiling entry function '([^']+)'", line)
        if match:
            current = usage.setdefault(match.group(1), {})
            continue
        match = re.search(r"Function properties for (\S+)", line)
        if match:
            current = usage.setdefault(match.group(1), {})
            continue
        if current is None:
            continue
        match = re.search(r'(\d+) bytes spill stores, (\d+) bytes spill '
                          r'loads', line)
        if match:
            current['spill_stores'] = int(match.group(1))
            current['spill_loads'] = int(match.group(2))
        match = re.search(r'Used (\d+) registers', line)
        if match:
            current['registers'] = int(match.group(1))
    return usage


def demangle(names: List[str]) -> Dict[str, str]:
    """Mangled -> readable names by c++filt (the mangled ones without
    it)."""
    filt = shutil.which('c++filt')
    if filt is None or not names:
        return {n: n for n in names}
    proc = subprocess.run([filt], input='\n'.join(names), text=True,
                          capture_output=True, check=False)
    readable = proc.stdout.splitlines()
    if proc.returncode != 0 or len(readable) != len(names):
        return {n: n for n in names}
    return dict(zip(names, readable))


def short_name(readable: str) -> str:
    """``void ...topk_window_kernel<...::Tf32TensorCoreConfig<4, 8, 64, 32,
    3, true>, float, float>(...)`` -> ``Tf32TensorCoreConfig<4, 8, 64, 32,
    3, true>, float``: the configuration and the feature type."""
    match = re.search(KERNEL + r'<(?:\w+::)*(\w+<[^>]*>), ([\w:]+),',
                      readable)
    if not match:
        return readable
    return f'{match.group(1)}, {match.group(2).split("::")[-1]}'


def census(sass: str, ptxas_log: str) -> List[dict]:
    """One row per topk_window_kernel in the listing, in its order."""
    functions = parse_functions(sass)
    usage = parse_ptxas(ptxas_log)
    names = [n for n in functions if KERNEL in n]
    readable = demangle(names)
    rows = []
    for name in names:
        instructions, labels = functions[name]
        rows.append(dict(kernel=short_name(readable[name]), mangled=name,
                         **usage.get(name, {}),
                         slice_loop=scoring_loop(instructions, labels)))
    return rows


def markdown(rows: List[dict], arch: int) -> str:
    head = ('| kernel (configuration, features) | registers | spills '
            '(stores/loads, B) | loop instructions | ' +
            ' | '.join(COLUMNS) + ' |')
    lines = [f'sm_{arch}: each kernel\'s scoring loop (scoring_loop), its '
             'instructions a warp runs per pass', '', head,
             '|' + '---|' * (4 + len(COLUMNS))]
    for row in rows:
        loop = row['slice_loop'] or {}
        cells = [f'`{row["kernel"]}`', str(row.get('registers', '-')),
                 f'{row.get("spill_stores", "-")}/'
                 f'{row.get("spill_loads", "-")}',
                 str(loop.get('instructions', '-'))]
        cells += [str(loop.get(c, '-')) for c in COLUMNS]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def find_nvdisasm() -> Optional[str]:
    """nvdisasm on PATH, beside nvcc, under $CUDA_HOME, or from the
    nvidia-cuda-nvdisasm wheel (``nvidia/*/bin`` on sys.path)."""
    found = shutil.which('nvdisasm')
    if found:
        return found
    folders = [osp.dirname(osp.realpath(shutil.which('nvcc') or '.'))]
    folders += [osp.join(os.environ.get(v) or '', 'bin')
                for v in ('CUDA_HOME', 'CUDA_PATH')]
    for entry in sys.path:
        folders += glob.glob(osp.join(entry, 'nvidia', '*', 'bin'))
    for folder in folders:
        path = osp.join(folder, 'nvdisasm')
        if osp.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def run(arch: int, csrc: Optional[str], nvdisasm: str) -> List[dict]:
    """Compiles, disassembles and counts; raises RuntimeError with the
    compiler's or nvdisasm's first error."""
    from sfc_plugin.ops import extension
    with tempfile.TemporaryDirectory(prefix='sfc_sass_') as out:
        (result, ) = extension.compile_cuda_sources(
            archs=(arch, ), csrc=csrc, units=(CUDA_UNIT, ),
            nvcc_flags=('-Xptxas=-v', ), output_dir=out, cubin=True)
        if not result.ok:
            raise RuntimeError(f'nvcc failed on {CUDA_UNIT}: '
                               f'{result.first_error}')
        cubin = osp.join(out, osp.basename(CUDA_UNIT) + '.cubin')
        proc = subprocess.run([nvdisasm, '-c', cubin], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f'{nvdisasm} failed on the cubin: '
                               f'{proc.stderr.strip()[:500]}')
        return census(proc.stdout, result.output)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', type=int, default=90, metavar='SM',
                        help='compute capability (default: 90)')
    parser.add_argument('--csrc', default=None, metavar='DIR',
                        help='sources folder laid out as sfc_plugin/ops/'
                        'csrc (default: the installed one)')
    parser.add_argument('--json', default=None, metavar='FILE',
                        help='also write the rows as JSON')
    args = parser.parse_args(argv)
    if args.arch <= 0:
        parser.error(f'--arch must be a compute capability such as 80 or '
                     f'90, got {args.arch}')
    if args.csrc and not osp.isfile(osp.join(args.csrc, CUDA_UNIT)):
        parser.error(f'--csrc {args.csrc}: no {CUDA_UNIT} there')
    if args.json:
        from sfc_plugin.utils.fileio import check_writable_file
        try:
            check_writable_file(args.json, '--json')
        except OSError as e:
            parser.error(str(e))
    nvdisasm = find_nvdisasm()
    if nvdisasm is None:
        print('cuda_kernel_sass: nvdisasm not found (not on PATH, beside '
              'nvcc, nor under $CUDA_HOME/bin): install the CUDA toolkit '
              'or `pip install nvidia-cuda-nvdisasm`', file=sys.stderr)
        return 2
    from sfc_plugin.ops.extension import NvccNotFoundError
    try:
        rows = run(args.arch, args.csrc, nvdisasm)
    except (NvccNotFoundError, RuntimeError) as e:
        print(f'cuda_kernel_sass: {e}', file=sys.stderr)
        return 1
    if not rows:
        print(f'cuda_kernel_sass: no {KERNEL} in the disassembly',
              file=sys.stderr)
        return 1
    print(markdown(rows, args.arch))
    if args.json:
        from sfc_plugin.utils.fileio import write_json
        write_json(dict(arch=args.arch, rows=rows), args.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())
