"""The robust-training model wrapper (:mod:`.robust`) and the classifier zoo (:mod:`.zoo`)."""

from tfrobust.models.robust import (RobustModel, load_model, responds_to_training, scale_loss_for_distribution,
                                   unwrap, warmup_scale)
from tfrobust.models.zoo import (CLASSIFIERS, build_classifier, cifar_cnn, ibp_cnn, linear_classifier,
                                 mnist_cnn, wide_resnet, wrn_34_10)

__all__ = [
    "responds_to_training",
    "RobustModel",
    "unwrap",
    "load_model",
    "warmup_scale",
    "mnist_cnn",
    "cifar_cnn",
    "linear_classifier",
    "ibp_cnn",
    "wide_resnet",
    "wrn_34_10",
    "build_classifier",
    "CLASSIFIERS",
    "scale_loss_for_distribution",
]

