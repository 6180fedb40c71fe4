"""Normalization statistics used by the dataset-distillation code bases (DC/DSA/MTT), and dataset names."""
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4866, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
#: dataset names with a built-in loader (anything else is a folder or an archive)
BUILTIN_DATASETS = ('cifar10', 'cifar100', 'digits', 'imagenet64', 'imagenet32', 'imagenet16', 'imagenette',
                    'imagewoof', 'imagemeow', 'imagesquawk', 'imagefruit', 'imageyellow')
