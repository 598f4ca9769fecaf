"""Procedural synthetic people written in the on-disk layouts of the real datasets.

Nothing here needs a download: every person is drawn with PIL from a handful of
attributes, and five small datasets are written exactly where and how the
loaders expect the real ones::

    python -m datasets.synthetic --out data/synthetic [--seed 0] [--scale 1.0]
    python -m datasets.synthetic --out data/synthetic --datasets pku-sketch --overwrite

or from Python ``generate("data/synthetic", seed=0, scale=0.2)``.

Folders written under ``--out`` (each one only if it is not there already), in
the forms the datasets are downloaded in; every person has two photos (Market:
two to four) and every image file is in the format its suffix names:

``CUHK-PEDES/``
    TBPS-CLIP's ``{train,val,test}_reid.json`` (lists of ``{"id", "file_path",
    "captions", "split"}``, some train entries also ``"captions_bt"``); photos
    in ``imgs/<file_path>``, each person's in the folder of one source set:
    ``CUHK01/<pid:04d><k:03d>.png`` (PNG), ``cam_a/<pid:03d>_<angle>.bmp`` and
    ``cam_b/<pid:03d>_<angle>.bmp`` (VIPeR, BMP), ``train_query/p<pid>_s<n>.jpg``
    or, for val and test people, ``test_query/p<pid>_s<n>.jpg`` (CUHK-SYSU), or
    ``Market/<pid:04d>_c<k>s1_<frame:06d>_01.jpg``; sketches traced from them in
    ``imgs-sketch2/`` (the Tri-PEDES release's folder) at the same path, a
    ``.jpg`` for a ``.bmp`` photo.
``ICFG-PEDES/``
    ``{train,val,test}_reid.json`` as above; photos named as in MSMT17,
    ``imgs/<train|test>/<pid:04d>/<pid:04d>_<k:03d>_<cam:02d>_0302morning_<frame:04d>_0.jpg``
    (``test`` for val and test people), sketches in ``imgs-sketch/`` at the same path.
``RSTPReid/``
    the dataset's own ``data_captions.json``, one list of ``{"id", "img_path",
    "captions", "split"}`` with ``img_path`` ``<pid:04d>_c<cam>_<frame:04d>.jpg``;
    photos in ``imgs/<img_path>``, sketches in ``imgs-sketch/<img_path>``.
``Market-Sketch-1K/``
    ``photo/{train,query}/<pid:04d>_c<cam>s<seq>_<frame:06d>_00.jpg``,
    ``sketch/<style>/{train,query}/`` for styles ``A``..``F`` with ``<pid:04d>.jpg``
    in ``A``, ``C``, ``E`` and ``<pid:04d>_<style>.jpg`` in ``B``, ``D``, ``F``
    (both forms occur in the release), and ``market_attribute.mat`` (Market-1501
    attribute struct).
``PKU-Sketch/``
    as unpacked from ``PKUSketchRE-ID_V1`` plus the Tri-ReID captions:
    ``photo/<id>_<cam:02d>_<frame>.jpg`` (two cameras per person, (03, 05),
    (04, 06) or (05, 07)), ``sketch/<id>.jpg``,
    ``styleAnnotation/<style>_<count>.txt`` (the ids drawn in painting style
    ``a``..``e``, one a line; drawn here in styles ``A``..``E``) and
    ``TriReID.txt`` (``<id>/<photo file name>@<caption>``, a line per photo,
    with a UTF-8 byte-order mark and CRLF line ends as released).  There are no
    split files: ``datasets.prepare`` or the loaders make them.

What makes the data a fair test of sketch + text retrieval (the "crossed" design,
:mod:`.persons`; counted and checked by :mod:`.design`):

* people come in families of F silhouettes (3-4) x C colour schemes (2-3), one person
  per combination; a family never straddles two splits;
* a family shares every shape fact Market's attribute sentence states (gender, age,
  hair length, sleeves, lower garment and length, bag, hat) and the colours it does not
  state (hair, skin, shoes, bag, hat);
* its silhouettes differ only in what a line sketch shows and the sentence never says:
  a bold print on the top (band, two stripes, sash or logo, in a lighter or darker shade
  of the top's colour, a label of its own so that sketches outline it), a coat-length
  top, hairstyle (fringe, tuft, ponytail, bun), boots, a bag's shape, build and stature;
* its colour schemes differ only in the colours the sentence states (top, lower);
* so the sentence alone narrows a search to the F people of one scheme (no two families
  share a sentence), a sketch alone to the C people of one silhouette (plus look-alikes),
  and only both to the person; the summary counts this per split, and for
  Market-Sketch-1K's test split the best R1/mAP that text only, sketch only or both can
  reach;
* photos draw every part's boundary a little darker; the PEDES captions are detailed
  (prints and shapes included) and every PEDES photo also carries its person's Market
  attribute sentence as its last caption; PKU-Sketch's Tri-ReID captions leave the
  sketch-only traits out;
* the PEDES sketches are traced from the photo's figure (same pose), the
  Market and PKU ones are drawn anew in a neutral pose in one of six styles.

Names, annotations and sketch styles are planned from ``seed`` in one process,
and every image is drawn from its own random stream keyed by ``(seed, dataset,
person, image)``: reruns give byte-identical files whatever the number of
worker processes.  A finished dataset folder carries a ``.synthetic.json``
marker (settings, format, counts, the design counts, the attributes of every
person and the styles of the drawn sketches); such a folder is skipped unless
``--overwrite`` or written in an older format.  Folders without the marker are never touched.

The package, by concern: :mod:`.persons` (silhouettes, people, families),
:mod:`.figure` (a figure's polygons and label map), :mod:`.drawing` (photos,
traced and drawn sketches), :mod:`.captions`, :mod:`.layouts` (per-dataset
file names, annotation files, splits and image jobs), :mod:`.design` (the counts, the
check and the best-possible numbers) and :mod:`.writer`
(rendering the jobs, writing, markers, :func:`generate` and the command line).
"""
from __future__ import annotations

from .captions import caption_attributes_bt, caption_bt, caption_cuhk, caption_icfg, caption_rstp
from .design import (
    TRAIT_WORDS,
    best_possible,
    check_design,
    design_counts,
    expected_rank_metrics,
    format_design,
)
from .drawing import (
    DRAWN,
    STYLES,
    TRACED,
    SketchStyle,
    render_drawn_sketch,
    render_photo,
    sketch_from_labels,
)
from .figure import HEIGHT, LABEL, PARTS, SUPER, WIDTH, Pose, build_figure, label_map
from .layouts import (
    CUHK_SOURCES,
    FOLDERS,
    PKU_CAMERA_PAIRS,
    PKU_STYLES,
    SKETCH_FOLDER,
    VIPER_ANGLES,
    DrawnJob,
    Job,
    PhotoJob,
    Plan,
    TracedJob,
    attribute_sentence,
    market_attribute_struct,
    market_sketch_name,
    people,
    plan_dataset,
)
from .persons import (
    BAG_COLOURS,
    COLOUR_RGB,
    DATASETS,
    DOWN_COLOURS,
    DRESS_COLOURS,
    FAMILY_SHAPES,
    HAIR_RGB,
    MARKET_FIELDS,
    PRINTS,
    SHOE_COLOURS,
    SIGNATURE_FIELDS,
    SILHOUETTE_TRAITS,
    SKIN_RGB,
    UP_COLOURS,
    Person,
    Silhouette,
    make_families,
    person_from_dict,
    print_rgb,
)
from .writer import FORMAT_VERSION, IMAGE_FORMATS, JPEG_QUALITY, MARKER, generate, main

__all__ = [
    "BAG_COLOURS", "COLOUR_RGB", "CUHK_SOURCES", "DATASETS", "DOWN_COLOURS", "DRAWN",
    "DRESS_COLOURS", "DrawnJob", "FAMILY_SHAPES", "FOLDERS", "FORMAT_VERSION", "HAIR_RGB",
    "HEIGHT", "IMAGE_FORMATS", "JPEG_QUALITY", "Job", "LABEL", "MARKER", "MARKET_FIELDS",
    "PARTS", "PKU_CAMERA_PAIRS", "PKU_STYLES", "PRINTS", "Person", "PhotoJob", "Plan", "Pose",
    "SHOE_COLOURS", "SIGNATURE_FIELDS", "SILHOUETTE_TRAITS", "SKETCH_FOLDER", "SKIN_RGB",
    "STYLES", "SUPER", "Silhouette", "SketchStyle", "TRACED", "TRAIT_WORDS", "TracedJob",
    "UP_COLOURS", "VIPER_ANGLES", "WIDTH", "attribute_sentence", "best_possible",
    "build_figure", "caption_attributes_bt", "caption_bt", "caption_cuhk", "caption_icfg",
    "caption_rstp", "check_design", "design_counts", "expected_rank_metrics", "format_design",
    "generate", "label_map", "main", "make_families", "market_attribute_struct",
    "market_sketch_name", "people", "person_from_dict", "plan_dataset", "print_rgb",
    "render_drawn_sketch", "render_photo", "sketch_from_labels",
]
