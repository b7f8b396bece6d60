"""Packaging for nni-labelfree: label-free neural architecture search on NNI 3.0."""
from setuptools import setup

setup(
    name='nni-labelfree',
    version='0.1.0',
    description='Label-free NAS strategies (RLNAS, UnNAS, UnrealNAS, Pi-NAS) for Microsoft NNI 3.0',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=[
        'nni_labelfree',
        'nni_labelfree.data',
        'nni_labelfree.metrics',
        'nni_labelfree.selection',
        'nni_labelfree.benchmarks',
        'nni_labelfree.experiment',
        'nni_labelfree.search_spaces',
        'nni_labelfree.strategies',
    ],
    # search_spaces/ and strategies/ live at the top of the repository but install inside the package,
    # so nothing generic lands at the top of site-packages.
    package_dir={
        'nni_labelfree.search_spaces': 'search_spaces',
        'nni_labelfree.strategies': 'strategies',
    },
    package_data={'nni_labelfree.benchmarks': ['*.csv.gz', 'PROVENANCE.md']},
    include_package_data=True,
    install_requires=[
        'nni==3.0',
        'torch>=2.0',
        'torchvision>=0.15',
        'pytorch-lightning>=2.0',
        'setuptools<81',  # nnictl imports pkg_resources
        'numpy',
        'scipy',
        'pyyaml',
    ],
    extras_require={'test': ['pytest']},
    entry_points={'console_scripts': ['nni-labelfree = nni_labelfree.experiment.cli:main']},
)
