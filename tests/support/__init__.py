"""Helpers shared by the test folders (importable as ``support``: pytest's ``pythonpath``
in pyproject.toml puts tests/ on sys.path).

    support.serving        a served model's spec and TorchServe contexts (unit serving tests)
    support.classify_data  scikit-learn's digits as ImageFolder / parquet (trainer and container tests)
    support.docker         the docker client and the built images (container and local-mode fixtures)
    support.containers     run, start and watch the images' containers (container tests)
    support.mnist_data     random MNIST in torchvision's idx layout (AWS training-toolkit compatibility tests)
"""
