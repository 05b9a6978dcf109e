import jax
import pytest

from lwm_core.errors import LWMError
from lwm_core.parallel.mesh import check_batch, check_model, logical_spec, make_mesh, parse_mesh


def test_mesh_syntax():
    assert parse_mesh("1,-1,4,1").dims == (1, -1, 4, 1)
    assert parse_mesh("!1,1,-1,1").plain_order
    m = parse_mesh("dp:2,fsdp:-1")
    assert m.dims == (2, -1, 1, 1)
    assert make_mesh("1,-1,4,1").shape == {"dp": 1, "fsdp": 2, "tp": 4, "sp": 1}
    assert make_mesh("1,1,1,1").devices.size == 1  # a smaller mesh runs on the first devices
    plain = make_mesh("!1,1,-1,1")
    assert list(plain.devices.reshape(-1)) == jax.devices()


@pytest.mark.parametrize("spec, message", [
    ("1,2,3", "is not four integers"),
    ("1,-1,-1,1", "more than one -1"),
    ("16,1,1,1", "needs 16 devices but 8 are available"),
    ("3,-1,1,1", "use 3 devices, which does not divide the 8"),
    ("dp:1,foo:2", "unknown axis 'foo'"),
    ("1,0,1,1", "non-positive"),
])
def test_bad_meshes_say_which_number(spec, message):
    with pytest.raises(LWMError, match=message):
        make_mesh(spec)


def test_divisibility_errors_name_numbers():
    mesh = make_mesh("2,2,2,1")
    with pytest.raises(LWMError, match=r"batch size 6 is not divisible by dp\*fsdp = 2\*2 = 4"):
        check_batch(mesh, 6)
    with pytest.raises(LWMError, match="heads .* not divisible by tp = 2"):
        check_model(mesh, 3, 3)
    with pytest.raises(LWMError, match="sequence length 10 is not divisible by sp = 4"):
        check_batch(make_mesh("1,2,1,4"), 2, 10)


def test_parameter_rules_reproduce_lwm():
    mesh = make_mesh("1,2,2,2")
    assert tuple(logical_spec(("layers", "embed", "heads"), mesh)) == (None, ("fsdp", "sp"), "tp")
    assert tuple(logical_spec(("layers", "mlp", "embed"), mesh)) == (None, "tp", ("fsdp", "sp"))
    assert tuple(logical_spec(("vocab", "embed"), mesh)) == ("tp", ("fsdp", "sp"))
    assert tuple(logical_spec(("embed", "vocab"), mesh)) == (("fsdp", "sp"), "tp")
    # a dimension the axes do not divide stays whole instead of failing inside XLA
    assert tuple(logical_spec(("vocab", "embed"), mesh, (1001, 256))) == (None, ("fsdp", "sp"))
