"""ONNX export of ``sfc::topk_window_match`` (TorchScript-based exporter).

The op exports as one custom-domain node::

    sfc::TopkWindowMatch(query, keys, key_labels) -> labels
        attributes: topk (int), radius (float), temperature (float),
                    unrestricted_keys (int), plugin_namespace = "sfc"

``plugin_namespace`` lets TensorRT's ONNX parser map the node to the
``TopkWindowMatch`` plugin of that namespace; ONNX Runtime runs it through
:func:`sfc_plugin.deploy.onnxruntime_session`. Runtimes with neither export
:func:`~sfc_plugin.ops.topk_window_match_decomposed` instead (standard ops).
"""
#: Custom domain, op type and plugin namespace of the exported node.
DOMAIN = 'sfc'
OP_TYPE = 'TopkWindowMatch'
PLUGIN_NAMESPACE = 'sfc'
#: The node's attributes and their ONNX types, in schema order.
ATTRIBUTES = dict(topk=int, radius=float, temperature=float,
                  unrestricted_keys=int, plugin_namespace=str)
MIN_OPSET = 17

_registered = set()


def register_onnx_symbolic(opset: int = MIN_OPSET) -> None:
    """Makes ``torch.onnx.export(..., dynamo=False)`` emit
    ``sfc::TopkWindowMatch`` for ``sfc::topk_window_match``. Needs the
    native op (its schema) loaded."""
    from torch.onnx import register_custom_op_symbolic, symbolic_helper

    from .extension import load_native_ops, native_ops_status
    if not load_native_ops():
        raise RuntimeError(
            'exporting sfc::TopkWindowMatch needs the native sfc ops: '
            f'{native_ops_status()}. Export the decomposition instead.')
    if opset in _registered:
        return

    @symbolic_helper.parse_args('v', 'v', 'v', 'i', 'f', 'f', 'i')
    def symbolic(g, query, keys, key_labels, topk, radius, temperature,
                 unrestricted_keys):
        out = g.op(f'{DOMAIN}::{OP_TYPE}', query, keys, key_labels,
                   topk_i=topk, radius_f=radius, temperature_f=temperature,
                   unrestricted_keys_i=unrestricted_keys,
                   plugin_namespace_s=PLUGIN_NAMESPACE)
        # (B, K, H, W) in key_labels' type: B from query, K, H, W from the
        # labels, so shape inference in later nodes still works.
        labels_type = key_labels.type()
        if labels_type.sizes() is not None:
            b, _, k, h, w = labels_type.sizes()
            out.setType(labels_type.with_sizes([b, k, h, w]))
        return out

    register_custom_op_symbolic('sfc::topk_window_match', symbolic, opset)
    _registered.add(opset)


__all__ = ['register_onnx_symbolic', 'DOMAIN', 'OP_TYPE', 'PLUGIN_NAMESPACE',
           'ATTRIBUTES']
