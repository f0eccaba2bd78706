"""Default statistics of human observers: the ONE table the rig and motion configs draw from.

Every number carries its source; docs/motion.md explains how each one is used.
"""

from __future__ import annotations

from typing import Any

SOURCES = {
    "dodgson2004": "Dodgson (2004), Variation and extrema of human interpupillary distance, "
    "Proc. SPIE 5291: adult mean IPD 63 mm.",
    "maclachlan2002": "MacLachlan & Howland (2002), Normal values and standard deviations for "
    "pupil diameter and interpupillary distance in subjects aged 1 month to 19 years, "
    "Ophthalmic Physiol. Opt. 22: IPD about 45 mm at age 1-2.",
    "bohannon1997": "Bohannon (1997), Comfortable and maximum walking speed of adults aged 20-79 "
    "years, Age and Ageing 26: comfortable speed 1.27-1.46 m/s.",
    "ji2005": "Ji, Pachi & Ellis (2005), Frequency and velocity of people walking, "
    "The Structural Engineer 83: mean pacing rate 1.8-2.0 Hz.",
    "hirasaki1999": "Hirasaki et al. (1999), Effects of walking velocity on vertical head and body "
    "movements during locomotion, Exp. Brain Res. 127: vertical head translation "
    "about 4 cm peak-to-peak at 1.2 m/s, at the step frequency.",
    "adolph2003": "Adolph, Vereijken & Shrout (2003), What changes in infant walking and why, "
    "Child Dev. 74: toddlers walk about 0.6-1.0 m/s at about 2.5-3 steps/s.",
    "land2001": "Land & Hayhoe (2001), In what ways do eye movements contribute to everyday "
    "activities?, Vision Res. 41: object fixations of about 0.5-1 s during "
    "natural tasks, gaze shifts about 1-2 per second.",
    "einhauser2007": "Einhaeuser et al. (2007), Human eye-head co-ordination in natural "
    "exploration, Network 18: head yaw speeds mostly below 100 deg/s, "
    "peaks near 200 deg/s during large gaze shifts.",
    "franchak2010": "Franchak & Adolph (2010), Visually guided navigation: head-mounted "
    "eye-tracking of natural locomotion in children and adults, Vision Res. 50: "
    "children fixate fewer obstacles and pause more often than adults.",
}

# Rig and motion defaults per observer. Keys match RigConfig / MotionConfig fields.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "adult": {
        "rig": {"ipd_m": 0.063, "eye_height_m": 1.6},  # dodgson2004; standing adult eye level
        "motion": {
            "walk_speed_mps": (1.0, 1.4),  # bohannon1997, slightly slower indoors
            "step_frequency_hz": 1.9,  # ji2005
            "bob_amplitude_m": 0.02,  # hirasaki1999: half of ~4 cm peak-to-peak
            "gaze_shift_rate_hz": 1.0,  # land2001
            "max_head_speed_dps": 200.0,  # einhauser2007
            "pause_probability": 0.3,  # franchak2010 (adults pause less than toddlers)
        },
    },
    "toddler": {
        "rig": {"ipd_m": 0.045, "eye_height_m": 0.8},  # maclachlan2002; toddler eye level
        "motion": {
            "walk_speed_mps": (0.6, 1.0),  # adolph2003
            "step_frequency_hz": 2.7,  # adolph2003
            "bob_amplitude_m": 0.015,  # scaled with leg length from hirasaki1999
            "gaze_shift_rate_hz": 0.8,  # franchak2010: fewer fixations than adults
            "max_head_speed_dps": 200.0,  # einhauser2007 (no toddler data; adult bound)
            "pause_probability": 0.5,  # franchak2010
        },
    },
}
