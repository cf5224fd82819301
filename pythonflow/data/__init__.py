"""Data files shipped with pythonflow (a sample image for examples and demos)."""
import os

__all__ = ["sample_image_path"]


def sample_image_path() -> str:
    """
    Return the path of the bundled 256x256 RGB sample image.

    Returns
    -------
    path : str
        Path of ``sample.png`` inside the installed package.

    Raises
    ------
    FileNotFoundError
        If the package was installed without its data files.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample.png")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: the package was installed without its "
                                "data files (package_data for pythonflow.data)")
    return path
