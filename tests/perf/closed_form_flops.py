"""Closed-form FLOP counts of our networks, for the tests of bench.perf.network_flops and of perf's columns."""

from torch import nn

from bench.nets.mlp import MIN_MATMUL_ROWS, MLPDenoiser


def mlp_flops(net: MLPDenoiser, batch: int) -> int:
    """2 per multiply-add: the pixel path on max(batch, 16) rows, the time path (one t) on 16 rows."""
    rows = max(batch, MIN_MATMUL_ROWS)

    def products(linears):
        return sum(layer.in_features * layer.out_features for layer in linears)

    pixel = [net.inp, net.out, *(lin for b in net.blocks for lin in (b.fc1, b.fc2))]
    time = [m for m in net.time_mlp if isinstance(m, nn.Linear)] + [b.emb for b in net.blocks]
    return 2 * (rows * products(pixel) + MIN_MATMUL_ROWS * products(time))
