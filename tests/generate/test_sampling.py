import jax
import jax.numpy as jnp
import numpy as np

from lwm_core.generate.sampling import Sampling, sample

# probabilities 0.5, 0.25, 0.15, 0.1 over four tokens (plus a vocabulary tail of impossible tokens)
LOGITS = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1] + [1e-30] * 4]))


def _draws(settings: Sampling, top_k: int = 0, n: int = 400) -> np.ndarray:
    keys = jax.random.split(jax.random.key(0), n)
    return np.asarray(jax.vmap(lambda k: sample(LOGITS, k, settings, top_k)[0])(keys))


def test_greedy_when_temperature_is_zero():
    assert set(_draws(Sampling(0.0, 1.0), n=20)) == {0}


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    assert set(_draws(Sampling(1.0, 0.5))) == {0}  # the top token alone holds 0.5
    assert set(_draws(Sampling(1.0, 0.6))) == {0, 1}
    assert set(_draws(Sampling(1.0, 0.8))) == {0, 1, 2}
    assert set(_draws(Sampling(1.0, 1.0))) == {0, 1, 2, 3}


def test_top_k_and_temperature():
    assert set(_draws(Sampling(1.0, 1.0), top_k=2)) == {0, 1}
    draws = _draws(Sampling(1.0, 1.0), n=4000)
    np.testing.assert_allclose(np.bincount(draws, minlength=4)[:4] / 4000, [0.5, 0.25, 0.15, 0.1], atol=0.03)
    cold = _draws(Sampling(0.1, 1.0), n=400)
    assert (cold == 0).mean() > 0.99  # low temperature sharpens towards the argmax
