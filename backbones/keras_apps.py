"""Backbones from ``keras.applications``, one registration each, in listing order.

``params_m`` and ``top1`` are the "Parameters" and "Top-1 Accuracy" columns of the table at
https://keras.io/api/applications/; MobileNetV3, absent from that table, takes them from its own
Keras page (keras.io/api/applications/mobilenet/, the ``*_1.0_224`` rows). ``preprocessing`` follows
each module's ``preprocess_input`` in ``keras/src/applications/``; ``min_input_size`` is the
``min_size`` its constructor enforces.
"""

from backbones._registry import BackboneSpec, register_backbone


@register_backbone
def efficientnetb0() -> BackboneSpec:
    return BackboneSpec(
        name="efficientnetb0",
        family="efficientnet",
        constructor="keras.applications:EfficientNetB0",
        input_size=224,
        preprocessing="none",  # rescales and normalises inside the application
        feature_width=1280,
        weights_file="efficientnetb0_notop.h5",
        params_m=5.3,
        top1=77.1,
        reference=True,
    )


@register_backbone
def efficientnetb1() -> BackboneSpec:
    return BackboneSpec(
        name="efficientnetb1",
        family="efficientnet",
        constructor="keras.applications:EfficientNetB1",
        input_size=240,
        preprocessing="none",
        feature_width=1280,
        weights_file="efficientnetb1_notop.h5",
        params_m=7.9,
        top1=79.1,
    )


@register_backbone
def efficientnetb2() -> BackboneSpec:
    return BackboneSpec(
        name="efficientnetb2",
        family="efficientnet",
        constructor="keras.applications:EfficientNetB2",
        input_size=260,
        preprocessing="none",
        feature_width=1408,
        weights_file="efficientnetb2_notop.h5",
        params_m=9.2,
        top1=80.1,
    )


@register_backbone
def efficientnetb3() -> BackboneSpec:
    return BackboneSpec(
        name="efficientnetb3",
        family="efficientnet",
        constructor="keras.applications:EfficientNetB3",
        input_size=300,
        preprocessing="none",
        feature_width=1536,
        weights_file="efficientnetb3_notop.h5",
        params_m=12.3,
        top1=81.6,
    )


@register_backbone
def efficientnetv2b0() -> BackboneSpec:
    return BackboneSpec(
        name="efficientnetv2b0",
        family="efficientnetv2",
        constructor="keras.applications:EfficientNetV2B0",
        input_size=224,
        preprocessing="none",  # include_preprocessing=True (the default): rescaling inside
        feature_width=1280,
        weights_file="efficientnetv2-b0_notop.h5",
        params_m=7.2,
        top1=78.7,
    )


@register_backbone
def efficientnetv2b1() -> BackboneSpec:
    return BackboneSpec(
        name="efficientnetv2b1",
        family="efficientnetv2",
        constructor="keras.applications:EfficientNetV2B1",
        input_size=240,
        preprocessing="none",
        feature_width=1280,
        weights_file="efficientnetv2-b1_notop.h5",
        params_m=8.2,
        top1=79.8,
    )


@register_backbone
def efficientnetv2s() -> BackboneSpec:
    return BackboneSpec(
        name="efficientnetv2s",
        family="efficientnetv2",
        constructor="keras.applications:EfficientNetV2S",
        input_size=384,
        preprocessing="none",
        feature_width=1280,
        weights_file="efficientnetv2-s_notop.h5",
        params_m=21.6,
        top1=83.9,
    )


@register_backbone
def convnexttiny() -> BackboneSpec:
    return BackboneSpec(
        name="convnexttiny",
        family="convnext",
        constructor="keras.applications:ConvNeXtTiny",
        input_size=224,
        preprocessing="none",  # include_preprocessing=True (the default): normalisation inside
        feature_width=768,
        weights_file="convnext_tiny_notop.h5",
        params_m=28.6,
        top1=81.3,
    )


@register_backbone
def convnextsmall() -> BackboneSpec:
    return BackboneSpec(
        name="convnextsmall",
        family="convnext",
        constructor="keras.applications:ConvNeXtSmall",
        input_size=224,
        preprocessing="none",
        feature_width=768,
        weights_file="convnext_small_notop.h5",
        params_m=50.2,
        top1=82.3,
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
        params_m=25.6,
        top1=74.9,
        reference=True,
    )


@register_backbone
def resnet101() -> BackboneSpec:
    return BackboneSpec(
        name="resnet101",
        family="resnet",
        constructor="keras.applications:ResNet101",
        input_size=224,
        preprocessing="caffe",
        feature_width=2048,
        weights_file="resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
        params_m=44.7,
        top1=76.4,
    )


@register_backbone
def resnet50v2() -> BackboneSpec:
    return BackboneSpec(
        name="resnet50v2",
        family="resnetv2",
        constructor="keras.applications:ResNet50V2",
        input_size=224,
        preprocessing="tf",
        feature_width=2048,
        weights_file="resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        params_m=25.6,
        top1=76.0,
    )


@register_backbone
def densenet121() -> BackboneSpec:
    return BackboneSpec(
        name="densenet121",
        family="densenet",
        constructor="keras.applications:DenseNet121",
        input_size=224,
        preprocessing="torch",
        feature_width=1024,
        weights_file="densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        params_m=8.1,
        top1=75.0,
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
        params_m=3.5,
        top1=71.3,
        reference=True,
    )


@register_backbone
def mobilenetv3small() -> BackboneSpec:
    return BackboneSpec(
        name="mobilenetv3small",
        family="mobilenet",
        constructor="keras.applications:MobileNetV3Small",
        input_size=224,
        preprocessing="none",  # include_preprocessing=True (the default): rescaling inside
        feature_width=576,
        weights_file="weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        params_m=2.9,
        top1=68.1,
    )


@register_backbone
def mobilenetv3large() -> BackboneSpec:
    return BackboneSpec(
        name="mobilenetv3large",
        family="mobilenet",
        constructor="keras.applications:MobileNetV3Large",
        input_size=224,
        preprocessing="none",
        feature_width=960,
        weights_file="weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
        params_m=5.4,
        top1=75.6,
    )


@register_backbone
def xception() -> BackboneSpec:
    return BackboneSpec(
        name="xception",
        family="xception",
        constructor="keras.applications:Xception",
        input_size=299,
        preprocessing="tf",
        feature_width=2048,
        weights_file="xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        min_input_size=71,
        params_m=22.9,
        top1=79.0,
    )


@register_backbone
def inceptionv3() -> BackboneSpec:
    return BackboneSpec(
        name="inceptionv3",
        family="inception",
        constructor="keras.applications:InceptionV3",
        input_size=299,
        preprocessing="tf",
        feature_width=2048,
        weights_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        min_input_size=75,
        params_m=23.9,
        top1=77.9,
    )


@register_backbone
def vgg16() -> BackboneSpec:
    return BackboneSpec(
        name="vgg16",
        family="vgg",
        constructor="keras.applications:VGG16",
        input_size=224,
        preprocessing="caffe",
        feature_width=512,
        weights_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        params_m=138.4,
        top1=71.3,
    )
