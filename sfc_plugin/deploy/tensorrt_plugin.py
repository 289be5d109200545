"""``sfc::TopkWindowMatch`` as a TensorRT plugin (TensorRT >= 10.7, the
``tensorrt.plugin`` quick-deployable-plugin API).

TensorRT's ONNX parser maps the exported node (op type TopkWindowMatch,
``plugin_namespace="sfc"``) to the plugin registered here; its
implementation runs the ``sfc::topk_window_match`` CUDA kernel on
TensorRT's stream. Importing this module needs TensorRT; call
:func:`register_tensorrt_plugin` before parsing a graph with the node.
"""
_registered = False


def register_tensorrt_plugin() -> None:
    """Registers the plugin once per process."""
    global _registered
    if _registered:
        return
    import tensorrt.plugin as trtp
    import torch

    from sfc_plugin.ops import native_ops_available

    @trtp.register('sfc::TopkWindowMatch')
    def _describe(query: trtp.TensorDesc, keys: trtp.TensorDesc,
                  key_labels: trtp.TensorDesc, topk: int, radius: float,
                  temperature: float, unrestricted_keys: int,
                  plugin_namespace: str) -> trtp.TensorDesc:
        # (B, T, K, H, W) labels -> (B, K, H, W) propagated labels.
        shape = key_labels.shape_expr
        return trtp.from_shape_expr((shape[0], shape[2], shape[3], shape[4]),
                                    dtype=key_labels.dtype)

    @trtp.impl('sfc::TopkWindowMatch')
    def _run(query: trtp.Tensor, keys: trtp.Tensor, key_labels: trtp.Tensor,
             topk: int, radius: float, temperature: float,
             unrestricted_keys: int, outputs, stream: int) -> None:
        if not native_ops_available('cuda'):
            raise RuntimeError('sfc::TopkWindowMatch plugin: the CUDA '
                               'kernel of sfc_plugin.ops is not built')
        q, k, lab = (torch.as_tensor(t, device='cuda')
                     for t in (query, keys, key_labels))
        out = torch.as_tensor(outputs[0], device='cuda')
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            out.copy_(torch.ops.sfc.topk_window_match(
                q, k, lab, topk, radius, temperature, unrestricted_keys))

    _registered = True
