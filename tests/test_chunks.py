"""Check calls sized for memory (``edgead.runtimes.chunks``): high-resolution images run alone, outputs in order."""

import numpy as np

from edgead.runtimes.base import Predictions
from edgead.runtimes.chunks import CALL_PIXELS, images_per_call, predict_in_calls


def test_images_per_call_by_input_size():
    assert images_per_call((1036, 1036)) == 1  # ViT-S/14 at 1036 px: 720 MB of attention per layer per image
    assert images_per_call((518, 518)) == 3
    assert images_per_call((224, 224)) == 8  # the limit, as before
    assert images_per_call((224, 224), limit=2) == 2
    assert images_per_call((4096, 4096)) == 1  # never zero
    assert images_per_call((1024, 1024)) * 1024 * 1024 <= CALL_PIXELS


def test_predict_in_calls_joins_outputs_in_order():
    sizes = []

    def predict(chunk):
        sizes.append(chunk.shape[0])
        scores = chunk[:, 0, 0, 0].astype(np.float32)
        return Predictions(scores, np.repeat(scores[:, None, None], 4, 1).repeat(4, 2), scores > 2, 0.5)

    images = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((5, 600, 600, 3), np.uint8)
    p = predict_in_calls(predict, images)
    assert sizes == [2, 2, 1]  # 600x600 = 360,000 px: two per call under CALL_PIXELS
    np.testing.assert_array_equal(p.scores, [0, 1, 2, 3, 4])
    assert p.maps.shape == (5, 4, 4) and p.maps[3, 2, 1] == 3
    np.testing.assert_array_equal(p.labels, [False, False, False, True, True])
    assert p.seconds == 1.5
