"""``python -m sfc_plugin.ops``: build the native kernels ahead of time
(for a container image, say) and report which devices they serve."""
import sys

from .extension import load_native_ops, native_ops_status

if __name__ == '__main__':
    ok = load_native_ops(verbose='-q' not in sys.argv[1:])
    print(native_ops_status())
    sys.exit(0 if ok else 1)
