"""J&F of a results folder in the official DAVIS format."""
import os
import os.path as osp
from typing import Dict, Optional, Sequence

from sfc_plugin.datasets import DAVISDataset, read_object_mask

from .metrics import DAVISMetric


def evaluate_davis_results(results_dir: str,
                           data_root: str,
                           ann_file: str = 'ImageSets/2017/val.txt',
                           sequences: Optional[Sequence[str]] = None,
                           bound_th: float = 0.008) -> Dict[str, float]:
    """Scores ``results_dir/<sequence>/<frame>.png`` against DAVIS.

    Masks are read as the official davis2017-evaluation toolkit reads
    results (the palette indices are the object ids) and scored by
    :class:`DAVISMetric`, the toolkit's protocol; so a folder this function
    scores is one the toolkit reads, and ``tools/track.py`` run on each
    sequence gives what ``mim test`` gives. Results are read as the
    annotations are (:func:`~sfc_plugin.datasets.read_object_mask`): an
    8-bit grey image holding only 0 and 255 is one object, as DAVIS-2016's
    masks are, not object 255 (DAVIS-2016's own masks, given as results,
    once scored 0).

    Args:
        results_dir (str): One folder per sequence, one PNG per frame.
        data_root (str): DAVIS root (``JPEGImages/480p``,
            ``Annotations/480p``).
        ann_file (str): Sequence list under ``data_root``.
            Defaults to 'ImageSets/2017/val.txt'.
        sequences (Sequence[str], optional): Score only these sequences of
            the list. Defaults to all.
        bound_th (float): Boundary tolerance. Defaults to 0.008.

    Returns:
        dict: ``J&F-Mean``, ``J-Mean``, ``J-Recall``, ``J-Decay``,
        ``F-Mean``, ``F-Recall``, ``F-Decay``.

    Raises:
        FileNotFoundError: A frame's result is missing (named).
        OSError: A result that cannot be read as an image.
        ValueError: A result that is not a palette or grey PNG of ids, or
            a sequence not in the list.
    """
    dataset = DAVISDataset(
        data_root=data_root, ann_file=ann_file, serialize_data=False)
    listed = {dataset.get_data_info(i)['video']
              for i in range(len(dataset))}
    unknown = sorted(set(sequences or ()) - listed)
    if unknown:
        raise ValueError(f'Sequences {unknown} are not in "{ann_file}" of '
                         f'"{data_root}"')
    results_dir = os.fspath(results_dir)
    if not osp.isdir(results_dir):
        raise FileNotFoundError(
            f'Results folder "{results_dir}" ' +
            ('is a file' if osp.exists(results_dir) else 'not found') +
            ' (one folder per sequence, one PNG per frame)')
    metric = DAVISMetric(bound_th=bound_th)
    expected: Dict[str, set] = {}
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        if sequences and info['video'] not in sequences:
            continue
        folder = osp.join(results_dir, info['video'])
        if info['video'] not in expected and not osp.isdir(folder):
            raise FileNotFoundError(
                f'Results of "{info["video"]}" not found: no folder '
                f'"{folder}"')
        name = osp.splitext(osp.basename(info['img_path']))[0]
        expected.setdefault(info['video'], set()).add(name + '.png')
        path = osp.join(folder, name + '.png')
        if not osp.isfile(path):
            raise FileNotFoundError(
                f'Results of "{info["video"]}" lack frame {name}: "{path}" '
                'not found')
        pred = read_object_mask(path, info.get('mask_format', 'auto'),
                                what='Result')
        metric.process(None, [dict(info, pred_seg_map=pred,
                                   pred_seg_map_path=path)])
    for video, names in expected.items():
        # Frames the sequence lacks: results of another video, or of a
        # sequence cut short in the data.
        extra = sorted(n for n in os.listdir(osp.join(results_dir, video))
                       if n.lower().endswith('.png') and n not in names)
        if extra:
            raise ValueError(
                f'Results of "{video}" hold {len(extra)} frames the sequence '
                f'lacks (e.g. "{osp.join(results_dir, video, extra[0])}"): '
                'results of another video?')
    return metric.compute_metrics(metric.results)
