from hrvit_mobile.labels import labels_for


def test_model_names_equal_to_a_shipped_set_take_its_palette() -> None:
    synthetic = labels_for(8)
    assert synthetic.dataset == "synthetic"
    same = labels_for(8, names=list(synthetic.classes))
    assert same.dataset == "synthetic" and same.palette == synthetic.palette
    other = labels_for(8, names=[f"thing_{i}" for i in range(8)])
    assert other.dataset == "custom" and other.classes[0] == "thing_0"
