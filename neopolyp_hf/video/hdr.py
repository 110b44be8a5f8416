"""HDR frames (HLG or PQ, BT.2020: a phone's HDR clip) tone-mapped to the SDR picture the model was trained on.

A decoder hands HDR frames over as 10-bit BT.2020 signal values; read as if they were SDR they look washed
out, off by tens of levels with half the colour contrast. Here each frame becomes display light
(ITU-R BT.2100: the HLG inverse OETF and its OOTF for a 1000 cd/m2 display, or the PQ EOTF), scaled so HDR
reference white (203 cd/m2, ITU-R BR.2408) is SDR white, converted from BT.2020 to BT.709 primaries
(ITU-R BT.2087), highlights above a knee rolled off smoothly instead of clipped, and encoded with the sRGB
curve, as the training frames are.
"""

from __future__ import annotations

import numpy as np

HLG_TRC, PQ_TRC = 18, 16  # FFmpeg's AVCOL_TRC_ARIB_STD_B67 and AVCOL_TRC_SMPTE2084
HDR_TRANSFERS = {HLG_TRC: "HLG", PQ_TRC: "PQ"}
REFERENCE_WHITE = 203.0  # cd/m2: HDR reference white (ITU-R BT.2408)
HLG_PEAK = 1000.0  # cd/m2: the nominal display of the HLG OOTF (gamma 1.2, BT.2100)
KNEE = 0.8  # relative to SDR white: linear below, rolled off above
BT2020_TO_BT709 = np.array(  # linear light, ITU-R BT.2087
    [[1.6605, -0.5876, -0.0728], [-0.1246, 1.1329, -0.0083], [-0.0182, -0.1006, 1.1187]], np.float32
)
BT2020_LUMA = np.array([0.2627, 0.6780, 0.0593], np.float32)
BT709_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


def hdr_transfer(frame) -> str | None:
    """ "HLG" or "PQ" for a PyAV frame of an HDR stream, else None."""
    return HDR_TRANSFERS.get(int(getattr(frame, "color_trc", 0) or 0))


def hlg_display_light(signal: np.ndarray) -> np.ndarray:
    """HLG R'G'B' (0..1, BT.2020) -> display light in cd/m2: inverse OETF, then the OOTF (BT.2100)."""
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    scene = np.where(signal <= 0.5, signal**2 / 3.0, (np.exp((signal - c) / a) + b) / 12.0)
    luma = np.maximum(scene @ BT2020_LUMA, 1e-6)[..., None]
    return HLG_PEAK * luma**0.2 * scene  # gamma 1.2: alpha * Ys^(gamma - 1) * E


def pq_display_light(signal: np.ndarray) -> np.ndarray:
    """PQ R'G'B' (0..1) -> display light in cd/m2 (the SMPTE ST 2084 EOTF)."""
    m1, m2 = 2610 / 16384, 2523 / 4096 * 128
    c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    power = np.power(np.clip(signal, 0.0, 1.0), 1.0 / m2)
    return 10000.0 * np.power(np.maximum(power - c1, 0.0) / (c2 - c3 * power), 1.0 / m1)


def roll_off(luma: np.ndarray) -> np.ndarray:
    """Relative luminance mapped into SDR's 0..1: unchanged up to KNEE, then an exponential shoulder that
    meets the identity with slope 1 and approaches 1."""
    span = 1.0 - KNEE
    return np.where(luma <= KNEE, luma, KNEE + span * (1.0 - np.exp(-(luma - KNEE) / span)))


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Linear light (0..1) -> sRGB signal (0..1)."""
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)


def tone_map(signal: np.ndarray, transfer: str) -> np.ndarray:
    """HxWx3 BT.2020 HDR signal values (0..1, float) -> HxWx3 uint8 sRGB BT.709 SDR."""
    light = hlg_display_light(signal) if transfer == "HLG" else pq_display_light(signal)
    relative = (light / REFERENCE_WHITE).astype(np.float32) @ BT2020_TO_BT709.T
    relative = np.maximum(relative, 0.0)  # BT.2020 colours outside BT.709: clipped to its gamut
    luma = np.maximum(relative @ BT709_LUMA, 1e-6)[..., None]
    sdr = relative * (roll_off(luma) / luma)
    return np.round(srgb_encode(sdr) * 255.0).astype(np.uint8)


def hdr_frame_to_rgb(frame) -> np.ndarray:
    """A PyAV HDR frame as HxWx3 uint8 SDR RGB: converted to 16-bit R'G'B' in its own (BT.2020) matrix and
    range, then `tone_map`."""
    transfer = hdr_transfer(frame)
    rgb48 = frame.to_ndarray(format="rgb48le")
    return tone_map(rgb48.astype(np.float32) / 65535.0, transfer)
