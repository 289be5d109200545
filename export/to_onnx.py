"""Export sfc_plugin's encoders (and optionally the propagation step) to ONNX.

Each export is checked in ONNX Runtime against PyTorch on real frames and
written, with a JSON report beside it, only if they agree:

    # fused SFC encoder (FC checkpoint + semantic ResNet-50), fp32
    python export/to_onnx.py configs/sfc_davis.py --checkpoint fc.pth \\
        --cfg-options model.encoder.semantic.checkpoint=moco.pth.tar \\
        --frames data/DAVIS/JPEGImages/480p/blackswan --out sfc.onnx
    # the FC branch alone, fp16, plus the propagation step as a custom node
    python export/to_onnx.py configs/sfc_davis.py --part fc --fp16 \\
        --frames FRAMES --out fc_fp16.onnx --propagation-step custom
"""
import argparse
import json
import os.path as osp

from sfc_plugin.deploy.encoder_export import (
    MIN_OPSET,
    PARTS,
    ExportError,
    export_encoder,
)
from sfc_plugin.deploy.propagation_step import (
    FORMS,
    export_checked_step,
    step_from_config,
)
from sfc_plugin.deploy.provenance import report_paths
from sfc_plugin.utils import register_all_modules
from sfc_plugin.utils.cli import (
    ConfigOptionsAction,
    add_debug_argument,
    run_tool,
)
from sfc_plugin.utils.config import config_inputs, load_config
from sfc_plugin.utils.fileio import check_output_location, check_writable_file


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='\n'.join(__doc__.splitlines()[2:]))
    p.add_argument('config', help='tracker config, e.g. configs/sfc_davis.py')
    p.add_argument('--checkpoint', help="loaded at the config's "
                   'checkpoint_field (the FC encoder), as tools/test.py does')
    p.add_argument('--part', choices=PARTS, default='full',
                   help="the config's encoder (FC, semantic or fused SFC), "
                   'or one branch of a fused config (default: full)')
    p.add_argument('--out', help='output .onnx (default: '
                   'work_dirs/onnx/<config>[-<part>][-fp16].onnx)')
    p.add_argument('--frames', nargs='+', required=True,
                   help='image files or frame folders for tracing and the '
                   'ONNX Runtime check')
    p.add_argument('--num-frames', type=int, default=2,
                   help='frames used, the check\'s batch (default 2)')
    p.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                   help='resize the frames (default: their own size)')
    p.add_argument('--fp16', action='store_true', help='export in float16')
    p.add_argument('--static', action='store_true',
                   help='fixed batch, height and width')
    p.add_argument('--opset', type=int, default=MIN_OPSET)
    p.add_argument('--atol', type=float,
                   help='tolerance on features (default 1e-4 fp32, 1e-2 fp16)')
    p.add_argument('--propagation-step', choices=('none', ) + FORMS,
                   default='none', help='also export the propagation step '
                   "with the config's propagator settings, as one "
                   'sfc::TopkWindowMatch node or a standard-op decomposition')
    p.add_argument('--cfg-options', nargs='+', action=ConfigOptionsAction,
                   help='override config settings, key=value')
    add_debug_argument(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.out is not None and not args.out.strip():
        raise ValueError('--out is empty: give the output .onnx path')
    register_all_modules()
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'Config not found: "{args.config}"')
    cfg = load_config(args.config, args.cfg_options)
    out = args.out or osp.join(
        'work_dirs', 'onnx',
        osp.splitext(osp.basename(args.config))[0] +
        ('' if args.part == 'full' else f'-{args.part}') +
        ('-fp16' if args.fp16 else '') + '.onnx')
    # Checked before the (slow) export: where it will write, and that no
    # output file is an input.
    if not out.endswith('.onnx'):
        raise ValueError(f'--out must end with .onnx, got "{out}"')
    check_writable_file(out, '--out')
    inputs = {'config': args.config, 'checkpoint': args.checkpoint}
    inputs.update(config_inputs(cfg))
    inputs.update((f'frame source {i}', f)
                  for i, f in enumerate(args.frames))
    outputs = [out, *report_paths(out)]
    step_out = f'{out[:-len(".onnx")]}-step-{args.propagation_step}.onnx'
    if args.propagation_step != 'none':
        outputs += [step_out, *report_paths(step_out)]
    for output in outputs:
        # A folder at a report's path would fail only after the export.
        check_writable_file(output, 'Output')
        check_output_location(output, inputs, 'Output')
    # Built before the encoder is written: bad propagator settings must
    # leave no files behind.
    step = (None if args.propagation_step == 'none' else step_from_config(
        cfg, args.propagation_step))
    try:
        report = export_encoder(
            cfg, out, args.frames, part=args.part, checkpoint=args.checkpoint,
            fp16=args.fp16, dynamic=not args.static, opset=args.opset,
            num_frames=args.num_frames, size=args.size, atol=args.atol)
        print(f'{out}: {report["output_shape"]} features, max abs diff '
              f'{report["max_abs_diff"]:.2e} (atol {report["atol"]:g}), '
              f'report {report_paths(out).passed}')
        if step is not None:
            checked = export_checked_step(step, out, step_out, args.frames,
                                          args.num_frames, args.size,
                                          args.opset)
            print(f'{step_out}: max abs diff '
                  f'{checked["max_abs_diff_outside_ties"]:.2e} against the '
                  f'torch op ({checked["near_tie_positions"]} of '
                  f'{checked["positions"]} positions at near-ties left out)')
    except ExportError as e:
        raise ExportError(f'export failed: {e}') from None
    print(json.dumps(dict(onnx=out, passed=True)))


if __name__ == '__main__':
    run_tool(main, 'to_onnx.py')
