"""benchmarks/reduced_precision_parts.py and tracking_overlap.py on the CPU:
their tables, and the fused convolutions against the separate ops."""
import json
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(REPO, 'benchmarks'))


def table_rows(text: str) -> dict:
    """The Markdown table's rows by their first cell."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if line.startswith('| ') and not line.startswith('| part'):
            rows[cells[0]] = cells
    return rows


def test_parts_table_sets_each_part_beside_what_it_replaced(capsys):
    import reduced_precision_parts
    reduced_precision_parts.main(['--config', 'fc_davis.py', '--repeats',
                                  '1'])
    rows = table_rows(capsys.readouterr().out)
    assert set(rows) == {'encoder', 'conv + ReLU', 'preprocess, CHW',
                         'preprocess, HWC permuted', 'max-pool'}
    part, before, before_ms, now, now_ms, ratio, outputs = rows['conv + ReLU']
    assert (before, now) == ('separate ops', 'fused')
    assert float(before_ms) > 0 and float(now_ms) > 0 and ratio.endswith('×')
    # bf16 unit-norm features: at most a few units in the last place apart.
    assert outputs.startswith('max diff ')
    assert float(outputs[len('max diff '):]) <= 8e-3
    assert rows['max-pool'][-1] == 'equal'


def test_tracking_overlap_takes_cuda_graphs_and_writes_its_rows(tmp_path,
                                                                 capsys):
    """``--cuda-graphs`` on the CPU: accepted (the tracker's option, which
    changes nothing there), named in the JSON, the settings agreeing."""
    import tracking_overlap
    out = tmp_path / 'rows.json'
    tracking_overlap.main(['--config', 'fc_davis.py', '--precision', 'bf16',
                           '--quick', '--frames', '3', '--in-flight', '0',
                           '1', '--repeats', '1', '--cuda-graphs', '--out',
                           str(out)])
    assert 'encoder as a CUDA graph' in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result['cuda_graphs'] is True
    assert [r['frames_in_flight'] for r in result['rows']] == [0, 1]
    assert all(r['same_predictions'] for r in result['rows'])
