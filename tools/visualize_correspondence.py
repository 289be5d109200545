"""Correspondence maps of a source pixel over a target frame (paper Fig. 5).

    python tools/visualize_correspondence.py SOURCE_FRAME TARGET_FRAME \
        --point X Y --out DIR [--config sfc_davis.py] [--checkpoint FC.pth]
        [--cfg-options model.encoder.semantic.checkpoint=MOCO.pth.tar]

For the chosen pixel (x right, y down) of the source frame, the cosine
similarity of its feature with every position of the target frame, drawn
as a heat map over the target (red = most similar, blue = least), for each
feature of the config's encoder: with the fused SFC encoder ``semantic.png``
(e.g. MoCo), ``fc.png`` and ``sfc.png`` (the fusion); with a single encoder
``features.png``. ``source.png`` marks the pixel; ``panel.png``, written
last, puts them side by side.
"""
import argparse
import os.path as osp

import torch

from sfc_plugin.apis import init_tracker, tracker_config
from sfc_plugin.datasets import LoadVideoFrame
from sfc_plugin.utils.cli import (
    ConfigOptionsAction,
    add_debug_argument,
    run_tool,
)
from sfc_plugin.utils.config import config_inputs, find_config
from sfc_plugin.utils.fileio import (
    check_output_location,
    check_writable_dir,
    remove_file,
    write_image,
)
from sfc_plugin.visualization import (
    mark_point,
    render_heatmap,
    similarity_maps,
    titled_panel,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('source_frame', help='image holding the pixel')
    parser.add_argument('target_frame', help='image to search')
    parser.add_argument('--point', nargs=2, type=float, required=True,
                        metavar=('X', 'Y'),
                        help='pixel of the source frame')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--config', default='sfc_davis.py',
                        help='tracker config (file or shipped name; default '
                        'sfc_davis.py: semantic, FC and fused maps)')
    parser.add_argument('--checkpoint',
                        help='FC checkpoint (the config\'s checkpoint_field)')
    parser.add_argument('--cfg-options', nargs='+',
                        action=ConfigOptionsAction,
                        help='config overrides, key=value')
    parser.add_argument('--device', help='cpu, cuda ... (default: cuda if '
                        'available)')
    add_debug_argument(parser)
    return parser.parse_args(argv)


def load_frame(path: str, preprocessor):
    """(BGR image, (3, H, W) normalised tensor) of an image file."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'Frame not found: "{path}"')
    img = LoadVideoFrame()(dict(img_path=path))['img']
    tensor = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    normalised = preprocessor(dict(inputs=[tensor]), False)['inputs'][0]
    return img, normalised


def main(argv=None) -> None:
    args = parse_args(argv)
    check_writable_dir(args.out, '--out')
    cfg = tracker_config(args.config, args.checkpoint, args.cfg_options)
    check_output_location(
        args.out,
        dict(config_inputs(cfg), **{
            'source frame': args.source_frame,
            'target frame': args.target_frame,
            'config': find_config(args.config),
            'checkpoint': args.checkpoint
        }), '--out')
    model = init_tracker(cfg, args.device)
    source, source_in = load_frame(args.source_frame,
                                   model.data_preprocessor)
    target, target_in = load_frame(args.target_frame,
                                   model.data_preprocessor)
    for frame in (source_in, target_in):
        model.check_encoder_memory(frame.to(model.data_preprocessor.device))
    maps = similarity_maps(model.encoder, source_in, target_in,
                           tuple(args.point))
    images = dict(source=mark_point(source, args.point))
    images.update(
        (name, render_heatmap(sim, target)) for name, sim in maps.items())
    # panel.png, written last, marks a complete set: an earlier one must
    # not sit beside maps of this run should it stop half way.
    remove_file(osp.join(args.out, 'panel.png'))
    for name, image in images.items():
        write_image(osp.join(args.out, name + '.png'), image)
    write_image(osp.join(args.out, 'panel.png'), titled_panel(images))
    print(f'Wrote {", ".join(n + ".png" for n in images)} and panel.png to '
          f'{args.out}')


if __name__ == '__main__':
    run_tool(main, 'visualize_correspondence.py')
