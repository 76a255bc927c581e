"""The constants of the noise hash, one home for bench.core.noise's tensor lanes and bench.core.noise_kernel.

Wellons' lowbias32 multipliers, the counter's lane multiplier and the salt that separates a
stream's two key lanes: both paths must use the same ones to draw the same bits.
"""

MASK32 = 0xFFFFFFFF
MULT_A = 0x7FEB352D
MULT_B = 0x846CA68B
LANE_MULT = 0x61C88647
STREAM_SALT = 0x68E31DA4
