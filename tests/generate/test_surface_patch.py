import numpy as np

from comgen.generate.surface_patch import nearest_fit


def test_nearest_fit_lands_wholly_on_the_allowed_pixels_nearest_first():
    allowed = np.zeros((40, 40), bool)
    allowed[5:15, 5:15] = True  # a 10x10 field near the top left
    allowed[20:40, 20:40] = True  # a bigger one further away
    disc = np.zeros((7, 7), bool)
    disc[1:6, 1:6] = True
    disc[0, 3] = disc[6, 3] = disc[3, 0] = disc[3, 6] = True
    y, x = nearest_fit(allowed, disc, (0, 0))
    assert allowed[y:y + 7, x:x + 7][disc].all()
    assert (y, x) == (5, 5)  # the nearest corner of the near field
    y, x = nearest_fit(allowed, disc, (30, 30))
    assert allowed[y:y + 7, x:x + 7][disc].all() and (y, x) == (30, 30)


def test_nearest_fit_none_when_the_shape_fits_nowhere():
    allowed = np.zeros((30, 30), bool)
    allowed[:, :5] = True  # a 5 px wide strip
    assert nearest_fit(allowed, np.ones((6, 6), bool), (10, 10)) is None
    assert nearest_fit(allowed, np.ones((40, 2), bool), (0, 0)) is None  # taller than the image
    y, x = nearest_fit(allowed, np.ones((6, 2), bool), (10, 20))  # a thin shape fits in the strip
    assert x + 2 <= 5 and y == 10
