"""Domain data for training: one module per concern.

* ``domain``: ``DomainData``, ``SPLITS``, ``DataError`` and the deterministic splits;
* ``store``: pre-resized images on disk (``ImageShard``, read without mapping the file);
* ``cache``: the on-disk cache every format goes through;
* ``digests``: each domain's and the overall data digest, the ``data`` record of a run and the
  check that a backbone saw the same splits;
* ``embedded``: the embedded benchmark's builders, the default five and ``letters``
  (``letters``: rendered from fonts; ``_pickle``: restricted unpickling);
* ``imagefolder``, ``decathlon``: the user formats (``_images``: decoding their image files in
  worker processes);
* ``factory``: ``load_domains``, which parses ``--domains`` items and picks the format;
* ``augment``: ``train_augment``; ``batches``: the training ``DataLoader`` (``TrainBatches``)
  and evaluation batches;
* ``summary``: the table of loaded domains.

May import ``multidomain``, ``training.errors`` and ``training.console``, never ``service`` or
``reporting``. This ``__init__`` only re-exports the public names, so ``from training.data
import X`` keeps working.
"""

from training.data._pickle import RestrictedUnpickler, restricted_pickle_load
from training.data.augment import train_augment
from training.data.batches import (
    SplitDataset,
    StepSampler,
    TrainBatches,
    images_to_tensor,
    iterate_eval,
    share_of,
)
from training.data.cache import CACHE_FORMAT_VERSION, embedded_cache_dir
from training.data.decathlon import (
    HELDOUT_FRACTION,
    DecathlonTestSet,
    decathlon_categories,
    load_decathlon_domain,
    load_decathlon_test,
)
from training.data.digests import (
    benchmark_digest,
    check_same_splits,
    data_record,
    domain_digest,
    overall_digest,
)
from training.data.domain import SPLITS, DataError, DomainData
from training.data.embedded import (
    EMBEDDED_DOMAINS,
    EXTRA_EMBEDDED_DOMAINS,
    KNOWN_EMBEDDED_DOMAINS,
    build_embedded_benchmark,
)
from training.data.factory import load_domains, plan_domains
from training.data.imagefolder import IMAGE_EXTENSIONS, load_imagefolder_domain
from training.data.store import ImageShard
from training.data.summary import print_summary

__all__ = [
    "CACHE_FORMAT_VERSION",
    "EMBEDDED_DOMAINS",
    "EXTRA_EMBEDDED_DOMAINS",
    "HELDOUT_FRACTION",
    "IMAGE_EXTENSIONS",
    "KNOWN_EMBEDDED_DOMAINS",
    "SPLITS",
    "DataError",
    "DecathlonTestSet",
    "DomainData",
    "ImageShard",
    "RestrictedUnpickler",
    "SplitDataset",
    "StepSampler",
    "TrainBatches",
    "benchmark_digest",
    "build_embedded_benchmark",
    "check_same_splits",
    "data_record",
    "decathlon_categories",
    "domain_digest",
    "embedded_cache_dir",
    "images_to_tensor",
    "iterate_eval",
    "load_decathlon_domain",
    "load_decathlon_test",
    "load_domains",
    "load_imagefolder_domain",
    "overall_digest",
    "plan_domains",
    "print_summary",
    "restricted_pickle_load",
    "share_of",
    "train_augment",
]
