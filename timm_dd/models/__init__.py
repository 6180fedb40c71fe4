"""timm_dd models; importing this package registers them with timm."""
from .alexnet_dd import *
from .convnet_dd import *
from .resnet_dd import *
from .vgg_dd import *
