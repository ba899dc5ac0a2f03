"""The ImageNet-1k → VOC class map: coverage, provenance against timm's synset list, spot checks, the
``correct`` rule, which heads it applies to, and the ``voc_lse`` target it feeds."""

from __future__ import annotations

import json

import pytest
import torch

from compute.data.classmap import DATA_FILE, ClassMap, ClassMapError, classmap_for, load_classmap
from compute.data.voc import VOC_CLASSES
from compute.models import imagenet_labels
from compute.targets import voc_logsumexp

VOC = {n: i for i, n in enumerate(VOC_CLASSES)}


@pytest.fixture(scope="module")
def cmap() -> ClassMap:
    return load_classmap()


@pytest.fixture(scope="module")
def labels() -> list[str]:
    return imagenet_labels()


def test_every_voc_class_is_in_the_file_with_a_rule_and_the_empty_ones_are_listed(cmap):
    doc = json.loads(DATA_FILE.read_text())
    assert list(doc["classes"]) == list(VOC_CLASSES[1:])
    for name, entry in doc["classes"].items():
        assert entry["rule"] and entry["wordnet"], name
        assert sorted(entry["indices"]) == entry["indices"], name
    empty = [n for n, e in doc["classes"].items() if not e["indices"]]
    assert doc["no_counterpart"] == empty == cmap.no_counterpart
    # every VOC class has at least one ImageNet-1k class (person through three WordNet person hyponyms,
    # pottedplant and tvmonitor only through documented additions)
    assert empty == []
    assert cmap.indices_of(VOC["person"]) == (981, 982, 983)
    for name in ("pottedplant", "tvmonitor"):
        entry = doc["classes"][name]
        assert set(entry["added"]) == {str(i) for i in entry["indices"]}, name


def test_members_match_timms_synset_order(cmap):
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    doc = json.loads(DATA_FILE.read_text())
    for name, entry in doc["classes"].items():
        assert set(entry["members"]) == {str(i) for i in entry["indices"]}, name
        for index, text in entry["members"].items():
            synset, lemma = text.split(" ", 1)
            assert info.index_to_label_name(int(index)) == synset, (name, index)
            assert info.index_to_description(int(index)).split(",")[0].strip() == lemma, (name, index)
        for index in list(entry["added"]) + list(entry["excluded"]):
            assert 0 <= int(index) < 1000
        assert not set(entry["excluded"]) & set(entry["members"]), name


@pytest.mark.parametrize("label, voc", [
    ("golden retriever", "dog"), ("Chihuahua", "dog"), ("Mexican hairless", "dog"), ("tabby", "cat"),
    ("Siamese cat", "cat"), ("airliner", "aeroplane"), ("warplane", "aeroplane"), ("mountain bike", "bicycle"),
    ("tricycle", "bicycle"), ("goldfinch", "bird"), ("king penguin", "bird"), ("speedboat", "boat"),
    ("container ship", "boat"), ("wine bottle", "bottle"), ("school bus", "bus"), ("sports car", "car"),
    ("cab", "car"), ("rocking chair", "chair"), ("ox", "cow"), ("dining table", "diningtable"),
    ("sorrel", "horse"), ("moped", "motorbike"), ("scuba diver", "person"), ("pot", "pottedplant"),
    ("ram", "sheep"), ("studio couch", "sofa"), ("steam locomotive", "train"), ("bullet train", "train"),
    ("television", "tvmonitor"), ("monitor", "tvmonitor"),
])
def test_spot_checks(cmap, labels, label, voc):
    assert cmap.voc_of(labels.index(label)) == VOC[voc]


@pytest.mark.parametrize("label", [
    "timber wolf", "dingo", "red fox", "lion", "tiger", "cheetah", "water buffalo", "bison", "zebra", "ibex",
    "airship", "space shuttle", "pickup", "trailer truck", "laptop", "vase", "park bench", "seashore", "suit",
    "jersey", "desk", "daisy",
])
def test_near_misses_and_unrelated_classes_map_to_nothing(cmap, labels, label):
    assert cmap.voc_of(labels.index(label)) is None


def test_ranges_known_from_the_wordnet_hierarchy(cmap, labels):
    assert all(cmap.voc_of(i) == VOC["dog"] for i in range(151, 269))        # all 118 domestic-dog breeds
    assert all(cmap.voc_of(i) == VOC["cat"] for i in range(281, 286))        # the five domestic cats
    birds = list(range(7, 25)) + list(range(80, 101)) + list(range(127, 147))
    assert sorted(cmap.indices_of(VOC["bird"])) == birds
    assert labels[134] == "crane" and cmap.voc_of(134) == VOC["bird"]       # the bird ...
    assert labels[517] == "crane" and cmap.voc_of(517) is None              # ... not the machine
    assert sum(len(v) for v in cmap.members.values()) == 249


def test_correct_is_true_false_or_null(cmap, labels):
    dog, cat, suit = labels.index("golden retriever"), labels.index("tabby"), labels.index("suit")
    assert cmap.correct(dog, [VOC["dog"], VOC["person"]]) is True
    assert cmap.correct(cat, [VOC["dog"]]) is False
    assert cmap.correct(suit, [VOC["person"]]) is None       # outside VOC's vocabulary: cannot be judged
    assert cmap.correct(None, [VOC["dog"]]) is None


def test_a_class_may_map_to_one_voc_class_only():
    with pytest.raises(ClassMapError, match="maps to both"):
        ClassMap(members={VOC["dog"]: (1, 2), VOC["cat"]: (2,)})
    with pytest.raises(ClassMapError, match="outside"):
        ClassMap(members={VOC["dog"]: (1000,)})


def test_a_custom_map_with_an_empty_class_lists_it_and_never_explains_it():
    cm = ClassMap(members={VOC["dog"]: (5,), VOC["person"]: ()})
    assert "person" in cm.no_counterpart and "dog" not in cm.no_counterpart
    assert cm.explainable([VOC["person"], VOC["dog"]]) == [VOC["dog"]]


def test_which_heads_the_map_applies_to(labels):
    cm, why = classmap_for(1000, labels)
    assert cm is not None and why is None
    assert classmap_for(1000, None)[0] is not None                      # random init of a 1000-class head
    for args in [(21843, None), (11821, None), (10, None)]:
        cm, why = classmap_for(*args)
        assert cm is None and "unsupported" in why and "1000" in why
    cm, why = classmap_for(0, None)
    assert cm is None and "headless" in why
    cm, why = classmap_for(1000, [f"c{i}" for i in range(1000)])
    assert cm is None and "not ImageNet-1k's" in why
    cm, why = classmap_for(1000, labels, class_names=("background", "a", "b"))
    assert cm is None and "not Pascal VOC" in why


def test_voc_lse_target_is_the_logsumexp_of_the_member_logits_and_sums_their_probabilities():
    torch.manual_seed(0)
    logits = torch.randn(2, 12, dtype=torch.float64, requires_grad=True)
    target = voc_logsumexp([(1, 4, 7), (3,)], [VOC["dog"], VOC["cat"]])
    value, cls = target(logits)
    assert target.kind == "voc_lse" and cls.tolist() == [VOC["dog"], VOC["cat"]]
    torch.testing.assert_close(value[0], torch.logsumexp(logits[0, [1, 4, 7]], 0))
    torch.testing.assert_close(value[1], logits[1, 3])
    p = logits.softmax(-1)
    torch.testing.assert_close(value[0].exp() / logits[0].exp().sum(), p[0, [1, 4, 7]].sum())
    (grad,) = torch.autograd.grad(value.sum(), logits)
    assert torch.count_nonzero(grad[0]) == 3 and torch.count_nonzero(grad[1]) == 1
    with pytest.raises(ValueError):
        voc_logsumexp([()], [VOC["person"]])


def test_a_head_trained_on_the_data_maps_by_name():
    # before: the demo's own 4-class head got no map, so `correct` was NULL on every demo row
    from compute.data.synthetic import CLASSES, class_names

    names = class_names(CLASSES)
    labels = list(reversed(CLASSES))                    # the head's order need not be the data's
    cm, why = classmap_for(len(labels), labels, names)
    assert why is None and cm is not None
    for head_index, label in enumerate(labels):
        data_index = names.index(label)
        assert cm.voc_of(head_index) == data_index and cm.indices_of(data_index) == (head_index,)
        assert cm.correct(head_index, [data_index]) is True
        assert cm.correct(head_index, [d for d in range(1, len(names)) if d != data_index]) is False
    assert cm.explainable(range(len(names))) == list(range(1, len(names)))


@pytest.mark.parametrize("labels", [["disc", "square", "background"], ["disc", "disc"], ["disc", "kite"], []])
def test_labels_that_are_not_the_data_classes_get_no_map_by_name(labels):
    from compute.data.classmap import by_name
    from compute.data.synthetic import class_names

    assert by_name(labels, class_names()) is None
    cm, why = classmap_for(len(labels), labels, class_names())
    assert cm is None and "correct" in why
