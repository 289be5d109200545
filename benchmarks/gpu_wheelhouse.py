"""Downloads the wheels ``benchmarks/gpu_check.py`` needs on a GPU machine.

The GPU machine has Python 3.12, torch with CUDA, numpy, opencv, nvcc and
Triton, but no package registry: everything else the project imports is
brought along as wheel files. Run this where PyPI is reachable, then carry
the folder (git-ignored, a few MiB) to the GPU machine with the checkout:

    python benchmarks/gpu_wheelhouse.py                 # -> wheelhouse/
    python benchmarks/gpu_wheelhouse.py --python-version 3.11 --dest DIR

Only exact pins are fetched, without their dependencies (``--no-deps``): the
list below is the whole closure of what ``import sfc_plugin`` (registries,
APIs, tools, training), mmengine 0.10.7's runner and optimiser wrappers,
mmcv-lite, the tests (pytest) and torch's extension builder (ninja) import
beyond torch, numpy and opencv. matplotlib, scipy and onnx are left out:
none of them is imported on those paths (mmengine imports matplotlib only
in its visualiser backends, scipy serves the JHMDB loader, onnx the export).
"""
import argparse
import os
import os.path as osp
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_DEST = osp.join(REPO, 'wheelhouse')
#: What the carried folder may weigh (device carries are capped at 64 MiB).
SIZE_BUDGET_MIB = 48

#: (pinned distribution, what proves it is present: a module, or a
#: program on PATH for ``ninja``). Pins are the versions the project is
#: tested with on the development machine.
REQUIREMENTS = (
    ('mmengine==0.10.7', 'mmengine'),
    ('mmcv-lite==2.2.0', 'mmcv'),
    ('addict==2.4.0', 'addict'),
    ('yapf==0.43.0', 'yapf'),
    ('platformdirs==4.14.8', 'platformdirs'),  # yapf's
    ('termcolor==3.3.0', 'termcolor'),
    ('rich==15.0.0', 'rich'),
    ('markdown-it-py==4.3.0', 'markdown_it'),  # rich's
    ('mdurl==0.1.2', 'mdurl'),  # markdown-it-py's
    ('pygments==2.20.0', 'pygments'),  # rich's and pytest's
    ('packaging==26.2', 'packaging'),
    ('PyYAML==6.0.3', 'yaml'),  # binary: mmengine's config and file IO
    ('pillow==13.0.0', 'PIL'),  # binary: mask PNGs
    ('ninja==1.13.2', 'program:ninja'),  # binary: cpp_extension builds
    ('pytest==9.0.3', 'pytest'),
    ('pluggy==1.6.0', 'pluggy'),
    ('iniconfig==2.3.0', 'iniconfig'),
)
#: Platforms a manylinux x86-64 machine with glibc >= 2.28 accepts.
PLATFORMS = ('manylinux_2_28_x86_64', 'manylinux_2_17_x86_64',
             'manylinux2014_x86_64')


def download(dest: str, python_version: str) -> int:
    """Fetches every pinned wheel for ``python_version`` into ``dest``;
    returns pip's exit status."""
    os.makedirs(dest, exist_ok=True)
    abi = 'cp' + python_version.replace('.', '')
    cmd = [
        sys.executable, '-m', 'pip', 'download', '--dest', dest,
        '--only-binary=:all:', '--no-deps', '--python-version',
        python_version, '--implementation', 'cp', '--abi', abi, '--abi',
        'abi3', '--abi', 'none'
    ]
    for platform in PLATFORMS:
        cmd += ['--platform', platform]
    cmd += [pin for pin, _ in REQUIREMENTS]
    return subprocess.call(cmd)


def folder_mib(path: str) -> float:
    return sum(
        osp.getsize(osp.join(root, name))
        for root, _, names in os.walk(path) for name in names) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--dest', default=DEFAULT_DEST,
                   help='wheel folder (default: %(default)s)')
    p.add_argument('--python-version', default='3.12',
                   help='the GPU machine\'s Python (default: %(default)s)')
    args = p.parse_args()
    status = download(args.dest, args.python_version)
    if status:
        sys.exit(f'pip download failed (exit status {status})')
    wheels = sorted(n for n in os.listdir(args.dest) if n.endswith('.whl'))
    size = folder_mib(args.dest)
    print(f'{len(wheels)} wheels, {size:.1f} MiB in {args.dest}')
    if size > SIZE_BUDGET_MIB:
        sys.exit(f'{args.dest} holds {size:.1f} MiB, over the '
                 f'{SIZE_BUDGET_MIB} MiB that may be carried to a GPU '
                 'machine: empty it and download again')


if __name__ == '__main__':
    main()
