"""Backbones from ``keras.applications``, one registration each."""

from backbones._registry import BackboneSpec, register_backbone


@register_backbone
def efficientnetb0() -> BackboneSpec:
    return BackboneSpec(
        name="efficientnetb0",
        family="efficientnet",
        constructor="keras.applications:EfficientNetB0",
        input_size=224,
        preprocessing="none",  # EfficientNet rescales and normalises inside the application
        feature_width=1280,
        weights_file="efficientnetb0_notop.h5",
    )


@register_backbone
def resnet50() -> BackboneSpec:
    return BackboneSpec(
        name="resnet50",
        family="resnet",
        constructor="keras.applications:ResNet50",
        input_size=224,
        preprocessing="caffe",
        feature_width=2048,
        weights_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    )


@register_backbone
def mobilenetv2() -> BackboneSpec:
    return BackboneSpec(
        name="mobilenetv2",
        family="mobilenet",
        constructor="keras.applications:MobileNetV2",
        input_size=224,
        preprocessing="tf",
        feature_width=1280,
        weights_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}_no_top.h5",
        weights_sizes=(96, 128, 160, 192, 224),
    )
