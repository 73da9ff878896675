"""Label sets: the organ grouping of the sample cohort's TotalSegmentator names, and dataset sets that refuse
label values they do not define."""

import json

import numpy as np
import pytest

from alice.data.labels import read_label_names
from alice.errors import InputError
from alice.segment.labels import BTCV, FLARE22, ORGANS, get_label_set, remap
from tests.segment.conftest import TOTALSEGMENTATOR_NAMES


def organ_of(names: dict[int, str]) -> dict[str, str]:
    """Structure name -> organ class name, through ``remap`` of an array holding every value once."""
    values = np.array(sorted(names), dtype=np.int32)
    classes = remap(values, names, ORGANS)
    return {names[int(v)]: ORGANS.class_names[c] for v, c in zip(values, classes)}


def test_the_organ_grouping_maps_the_sample_cohort_structures():
    organ = organ_of(read_label_names(TOTALSEGMENTATOR_NAMES))
    vertebrae = [name for name in organ if name.startswith("vertebrae_")]
    assert len(vertebrae) == 25 and {organ[name] for name in vertebrae} == {"vertebrae"}
    assert {organ[n] for n in organ if n.startswith("lung_")} == {"lungs"}
    assert organ["kidney_left"] == organ["kidney_right"] == "kidneys"
    assert organ["heart"] == organ["atrial_appendage_left"] == "heart"
    assert [organ[n] for n in ("liver", "spleen", "stomach", "pancreas", "aorta")] == \
        ["liver", "spleen", "stomach", "pancreas", "aorta"]
    # Neighbours that are not in the set stay background.
    assert {organ[n] for n in ("rib_left_1", "sacrum", "gallbladder", "inferior_vena_cava", "kidney_cyst_left")} \
        == {"background"}
    assert ORGANS.class_names == ["background", "liver", "spleen", "kidneys", "stomach", "pancreas", "aorta", "heart",
                                  "lungs", "vertebrae"]


def test_every_organ_class_is_present_in_the_sample_ct_labels():
    import nibabel as nib

    from alice import paths

    label = np.asarray(nib.load(paths.SAMPLE_COHORT_DIR / "labels" / "lidc0001.nii.gz").dataobj)
    classes = remap(label, read_label_names(TOTALSEGMENTATOR_NAMES), ORGANS)
    assert set(np.unique(classes)) == set(range(ORGANS.num_classes))


def test_a_dataset_label_set_keeps_its_values_and_refuses_others_by_value_and_file():
    label = np.array([[[0, 1, 6, 11, 13]]])
    assert remap(label, {}, FLARE22).tolist() == [[[0, 1, 6, 11, 13]]]
    assert FLARE22.class_names[1] == "liver" and BTCV.class_names[1] == "spleen" and BTCV.num_classes == 14
    with pytest.raises(InputError, match=r"case7_label.nii.gz: label value\(s\) \[14, 20\] are outside the btcv"):
        remap(np.array([[[0, 3, 14, 20]]]), {}, BTCV, "case7_label.nii.gz")


@pytest.mark.parametrize("labels", [{"0": "background", "1": "liver", "2": "cancer"},
                                    {"background": 0, "liver": 1, "cancer": 2}])
def test_a_decathlon_dataset_json_gives_its_label_set(tmp_path, labels):
    dataset = tmp_path / "Task03_Liver" / "dataset.json"
    dataset.parent.mkdir()
    dataset.write_text(json.dumps({"name": "Liver", "labels": labels}))
    label_set = get_label_set(str(dataset))
    assert label_set.class_names == ["background", "liver", "cancer"]
    with pytest.raises(InputError, match=r"\[3\]"):
        remap(np.array([[[0, 1, 2, 3]]]), {}, label_set)
    with pytest.raises(InputError, match="unknown label set 'organz'"):
        get_label_set("organz")
