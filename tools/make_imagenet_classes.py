"""Write keras_res2net/data/imagenet_classes.json from the synset lists timm ships.

Run with the reference environment: `.venv-ref/bin/python tools/make_imagenet_classes.py`.
Output: a list of 1000 [wordnet_id, label] pairs in the standard ImageNet-1k class order.
"""

import json
import pathlib

import timm

INFO = pathlib.Path(timm.__file__).parent / "data" / "_info"
ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "keras_res2net" / "data" / "imagenet_classes.json"

synsets = (INFO / "imagenet_synsets.txt").read_text().split()
lemma_lines = (INFO / "imagenet_synset_to_lemma.txt").read_text().splitlines()
lemmas = dict(line.split("\t", 1) for line in lemma_lines)
classes = [[wnid, lemmas[wnid].split(",")[0].strip().replace(" ", "_")] for wnid in synsets]
assert len(classes) == 1000, len(classes)
OUT.write_text(json.dumps(classes, separators=(",", ":")))
print(f"wrote {OUT} ({len(classes)} classes; first {classes[0]}, last {classes[-1]})")
