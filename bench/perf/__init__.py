"""``python -m bench perf``: what our sampler loops cost beside the network, and beside diffusers' loop.

cli (flags, main), options, networks (random-weight eps networks), sampler_loops (which samplers run,
diffusers' peer loops), timing (clocks, memory, interleaved medians), run (the measurements), cells
(a config's (model, sampler) pairs on their own networks), rows (the table and results/perf.csv's
columns), network_flops (FLOPs and GPU peaks).
"""
