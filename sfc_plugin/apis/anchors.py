"""Anchor frames: labels given for later frames of a video (corrections,
objects entering the scene), resolved and checked before any work."""
import os
import os.path as osp
from typing import Dict, Mapping, NamedTuple, Optional, Union

import numpy as np
from mmcv.transforms import BaseTransform

from sfc_plugin.datasets.utils import is_image_file
from sfc_plugin.datasets.video_reader import VideoReader

#: A label file per anchor frame, named after the frame.
AnchorsArg = Union[str, os.PathLike, Mapping[Union[int, str], object]]


class ResolvedAnchors(dict):
    """Frame index → :class:`Anchor`, as :func:`resolve_anchors` checked
    them (resolving it again returns it as it is)."""


class Anchor(NamedTuple):
    """Labels given for one frame: the label file, and whether it holds
    every object still in the video (objects absent from it end)."""
    labels: str
    complete: bool = False


def _frame_index(key, names: Dict[str, int], reader: VideoReader,
                 source: str) -> int:
    """The index of the frame an anchor names (index, or frame name)."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        index = int(key)
        if index < 0:
            raise ValueError(f'Anchor for frame {index} of "{source}": it '
                             'comes before frame 0')
    elif isinstance(key, str) and key in names:
        index = names[key]
    else:
        raise ValueError(
            f'Anchor "{key}" names no frame of "{source}" (frames are named '
            f'like "{next(iter(names), "00000")}")')
    total = reader.num_frames
    if total is None:
        raise ValueError(f'Anchors need the frame count of "{source}", '
                         'which its container does not state')
    if index >= total:
        raise ValueError(f'Anchor for frame {index} of "{source}": the '
                         f'video has {total} frames')
    if index == 0:
        raise ValueError(f'Anchor "{key}" is frame 0 of "{source}": frame '
                         '0\'s labels are the first-frame labels')
    return index


def _entries(anchors: AnchorsArg, kind: str, complete: bool):
    """(frame key, Anchor) pairs of a folder or a mapping."""
    if isinstance(anchors, Mapping):
        for key, value in anchors.items():
            if isinstance(value, Anchor):
                yield key, value
            elif isinstance(value, Mapping):
                yield key, Anchor(os.fspath(value['labels']),
                                  bool(value.get('complete', complete)))
            else:
                yield key, Anchor(os.fspath(value), complete)
        return
    folder = os.fspath(anchors)
    if not osp.isdir(folder):
        raise FileNotFoundError(f'Anchor folder not found: "{folder}"')
    for name in sorted(os.listdir(folder)):
        path = osp.join(folder, name)
        if name.startswith('.') or osp.isdir(path):
            continue
        if not osp.isfile(path):
            # A FIFO or a device would block the run for good.
            raise ValueError(f'Anchor "{path}" is not a regular file')
        wanted = (name.lower().endswith('.json') if kind == 'keypoints'
                  else is_image_file(name))
        if not wanted:
            raise ValueError(
                f'Anchor folder "{folder}" holds "{name}", which is no '
                + ('keypoint JSON file' if kind == 'keypoints' else
                   'label image') + ' (one file per anchor frame, named '
                'after the frame)')
        yield osp.splitext(name)[0], Anchor(path, complete)


def resolve_anchors(anchors: Optional[AnchorsArg], reader: VideoReader,
                    source: str, kind: str, label_loader: BaseTransform,
                    complete: bool = False,
                    num_keypoints: Optional[int] = None
                    ) -> Dict[int, Anchor]:
    """The anchors of a video by frame index, every one checked.

    Args:
        anchors (str | PathLike | Mapping, optional): A folder of label
            files named after frames (``00040.png`` for the frame file
            ``00040.jpg``, or for frame 40 of a video file; ``.json`` for
            keypoints), or a mapping from frame index or name to a label
            file, an :class:`Anchor`, or ``dict(labels=..., complete=...)``.
        reader (VideoReader): The video's frames.
        source (str): The video, for messages.
        kind (str): 'mask', 'parts' or 'keypoints'.
        label_loader (BaseTransform): The transform that loads this kind of
            labels for a tracker (it checks them as for frame 0).
        complete (bool): Default of every anchor's ``complete``. Defaults
            to False.
        num_keypoints (int, optional): For keypoints: the first frame's
            keypoint count, which every anchor must have.

    Returns:
        ResolvedAnchors: Frame index → :class:`Anchor` (given one, it is
        returned as it is: it was checked).

    Raises:
        ValueError: An anchor naming no frame of the video, frame 0 or a
            frame before it, two anchors for one frame, a label file of
            another size than the frames, lossy or otherwise unreadable
            labels (named), ``complete`` for keypoints or part maps, or
            keypoint anchors of another count than ``num_keypoints``.
        FileNotFoundError: A missing folder or label file.
    """
    if isinstance(anchors, ResolvedAnchors):
        return anchors
    resolved = ResolvedAnchors()
    if anchors is None:
        return resolved
    names = {name: i for i, name in enumerate(_frame_names(reader))}
    path_key = 'joints_path' if kind == 'keypoints' else 'seg_map_path'
    height, width = reader.frame_size
    probe = np.zeros((height, width, 1), np.uint8)
    for key, anchor in _entries(anchors, kind, complete):
        index = _frame_index(key, names, reader, source)
        if index in resolved:
            raise ValueError(f'Two anchors for frame {index} of "{source}": '
                             f'"{resolved[index].labels}" and '
                             f'"{anchor.labels}"')
        if anchor.complete and kind != 'mask':
            raise ValueError(f'Anchor "{anchor.labels}": complete anchors '
                             'end objects; they are for object masks')
        if not osp.isfile(anchor.labels):
            raise FileNotFoundError(
                f'Anchor labels not found: "{anchor.labels}"')
        loaded = label_loader(dict(img=probe,
                                   img_path=_frame_path(reader, index),
                                   frame_id=index, anchor=True,
                                   **{path_key: anchor.labels}))
        count = len(loaded['gt_joints']) if kind == 'keypoints' else None
        if num_keypoints is not None and count != num_keypoints:
            raise ValueError(
                f'Anchor "{anchor.labels}" holds {count} keypoints; the '
                f'first frame\'s labels hold {num_keypoints} (an anchor '
                'gives every keypoint of its frame)')
        resolved[index] = anchor
    return resolved


def anchor_inputs(anchors: Optional[AnchorsArg]) -> Dict[str, str]:
    """The files and folders anchors read, by what they are, for the
    check that no output overlaps an input (before anything is read)."""
    if anchors is None:
        return {}
    if not isinstance(anchors, Mapping):
        return {'anchors': os.fspath(anchors)}
    return {f'anchor {key}': anchor.labels
            for key, anchor in _entries(anchors, 'mask', False)}


def _frame_path(reader: VideoReader, index: int) -> str:
    """Frame ``index`` as the reader names it in messages."""
    if hasattr(reader, 'frame_names'):
        return osp.join(reader.path, reader.frame_names[index])
    return f'{reader.path}#{index}'


def _frame_names(reader: VideoReader):
    """Frame names in order: a folder's file stems, a video's 00000, ..."""
    if hasattr(reader, 'frame_names'):
        return [osp.splitext(n)[0] for n in reader.frame_names]
    return [f'{i:05d}' for i in range(reader.num_frames or 0)]
