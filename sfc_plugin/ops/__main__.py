"""``python -m sfc_plugin.ops``: build the native kernels ahead of time
(for a container image, say) and report which devices they serve.

``python -m sfc_plugin.ops --compile-only cuda [--arch 80 90]`` compiles
the CUDA build's sources with nvcc instead, without a GPU and without
loading anything (see :func:`~sfc_plugin.ops.extension.compile_cuda_sources`):
one line per unit with its time; exit status 0 when all compiled, 1 with the
compiler's first error otherwise, 2 when there is no nvcc.
"""
import argparse
import sys

from .extension import (
    DEFAULT_CUDA_ARCHS,
    NvccNotFoundError,
    compile_cuda_sources,
    load_native_ops,
    native_ops_status,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog='python -m sfc_plugin.ops',
        description='Build the native topk_window_match kernels ahead of '
        'time, or only compile the CUDA sources (no GPU needed).')
    p.add_argument('--compile-only', choices=['cuda'],
                   help='compile the CUDA build\'s sources to object files '
                   'with nvcc; nothing is linked or loaded')
    p.add_argument('--arch', type=int, nargs='+',
                   default=list(DEFAULT_CUDA_ARCHS), metavar='SM',
                   help='with --compile-only: compute capabilities '
                   '(default: %(default)s)')
    p.add_argument('-q', '--quiet', action='store_true',
                   help='build: no compiler output; --compile-only: print '
                   'only failures and warnings')
    p.add_argument('-v', '--verbose', action='store_true',
                   help='with --compile-only: print each command and the '
                   'compilers\' whole output')
    return p.parse_args(argv)


def compile_only(args) -> int:
    try:
        results = compile_cuda_sources(archs=args.arch, verbose=args.verbose)
    except NvccNotFoundError as e:
        print(f'sfc_plugin.ops: {e}', file=sys.stderr)
        return 2
    except ValueError as e:
        print(f'sfc_plugin.ops: {e}', file=sys.stderr)
        return 2
    for r in results:
        if r.status == 'ok' and not args.quiet:
            print(f'compiled {r.source} ({r.compiler}) in {r.seconds:.1f} s',
                  flush=True)
        elif r.status == 'skipped' and not args.quiet:
            print(f'skipped {r.source}: an earlier unit failed', flush=True)
        elif r.status == 'failed':
            print(f'FAILED {r.source} ({r.compiler}) after {r.seconds:.1f} '
                  f's; first error:\n{r.first_error}', flush=True)
        for line in r.own_warnings:
            print(f'warning in {r.source}: {line}', flush=True)
    return 0 if all(r.ok for r in results) else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.compile_only:
        return compile_only(args)
    ok = load_native_ops(verbose=not args.quiet)
    print(native_ops_status())
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
