import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLosslessSV1, generate_uid

from medsd.data.errors import MedImageError
from medsd.data.io import dicom_window, read_image, read_nifti_slices
from medsd.data.writers import write_dicom_secondary_capture, write_png8, write_png16


def write_ct_dicom(path, stored, *, photometric="MONOCHROME2", intercept=-1024.0, pixels=True, syntax=None):
    """A 12-bit CT image written with plain pydicom (HU = stored + intercept)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CT", "P001"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = "1", str(intercept)
    ds.WindowCenter, ds.WindowWidth = "-600", "1500"
    if pixels and syntax is None:
        ds.PixelData = stored.astype("<u2").tobytes()
    elif pixels:
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + b"\x00" * 64])
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def ct_stored():
    return np.random.default_rng(0).integers(0, 4096, (48, 40)).astype(np.uint16)


def test_ct_dicom_to_hu(tmp_path, ct_stored):
    img = read_image(write_ct_dicom(tmp_path / "ct.dcm", ct_stored))
    assert img.array.dtype == np.float32 and img.array.shape == (48, 40)
    np.testing.assert_allclose(img.array, ct_stored.astype(np.float32) - 1024, atol=1)
    assert img.meta["modality"] == "CT" and img.meta["bit_depth"] == 12
    assert img.meta["window"] == (-600.0, 1500.0) and img.meta["patient_id"] == "P001"
    w = dicom_window(img.meta)
    assert (w.low, w.high) == (-1350.0, 150.0)
    assert dicom_window({"window": None}) is None


def test_secondary_capture_roundtrip(tmp_path, ct_stored):
    hu = read_image(write_ct_dicom(tmp_path / "ct.dcm", ct_stored)).array
    out = write_dicom_secondary_capture(tmp_path / "sc.dcm", hu, modality="CT", window=(-600, 1500))
    back = read_image(out)
    assert np.abs(back.array - hu).max() <= 1.0
    assert back.meta["modality"] == "CT" and back.meta["bit_depth"] == 16
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.BurnedInAnnotation == "NO"
    assert str(ds.PatientName) == "SYNTHETIC" and "SYNTHETIC" in ds.ImageComments
    assert "SYNTHETIC" in ds.SeriesDescription and ds.PixelRepresentation == 0 and ds.BitsAllocated == 16
    assert "P001" not in str(ds)  # no patient data copied
    # float data without a given rescale is spread over 16 bits
    x = np.linspace(-3.5, 7.25, 600, dtype=np.float32).reshape(20, 30)
    np.testing.assert_allclose(
        read_image(write_dicom_secondary_capture(tmp_path / "f.dcm", x)).array, x, atol=2e-4
    )
    with pytest.raises(MedImageError, match="do not fit 16-bit"):
        write_dicom_secondary_capture(tmp_path / "bad.dcm", hu, rescale=(1.0, 0.0))


def test_monochrome1_inverted(tmp_path, ct_stored):
    m2 = read_image(write_ct_dicom(tmp_path / "m2.dcm", ct_stored, intercept=0)).array
    m1 = read_image(write_ct_dicom(tmp_path / "m1.dcm", ct_stored, intercept=0, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(m1.array, 4095 - m2)
    assert m1.meta["inverted"] is True


def test_dicom_without_pixel_data(tmp_path, ct_stored):
    path = write_ct_dicom(tmp_path / "sr.dcm", ct_stored, pixels=False)
    with pytest.raises(MedImageError, match="sr.dcm: DICOM has no PixelData"):
        read_image(path)


def test_dicom_compressed_without_decoder(tmp_path, ct_stored):
    path = write_ct_dicom(tmp_path / "jpeg.dcm", ct_stored, syntax=JPEGLosslessSV1)
    with pytest.raises(MedImageError, match=r"jpeg.dcm: cannot decode compressed transfer syntax.*pylibjpeg"):
        read_image(path)


def test_png16_keeps_all_levels(tmp_path):
    levels = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    img = read_image(write_png16(tmp_path / "a.png", levels))
    assert img.meta["bit_depth"] == 16
    np.testing.assert_array_equal(img.array, levels.astype(np.float32))
    # float input in [0, 1]
    x = np.linspace(0, 1, 65536).reshape(256, 256)
    assert len(np.unique(read_image(write_png16(tmp_path / "b.png", x)).array)) == 65536


def test_tiff16_lossless(tmp_path):
    levels = np.arange(0, 65536, 3, dtype=np.uint16)[:4096].reshape(64, 64)
    Image.fromarray(levels).save(tmp_path / "a.tif")
    img = read_image(tmp_path / "a.tif")
    np.testing.assert_array_equal(img.array, levels.astype(np.float32))
    assert img.meta["bit_depth"] == 16


def test_png8_and_rgb(tmp_path):
    x = np.linspace(0, 1, 100).reshape(10, 10)
    img = read_image(write_png8(tmp_path / "g.png", torch.from_numpy(x)[None]))
    assert img.meta["bit_depth"] == 8 and img.array.shape == (10, 10)
    np.testing.assert_array_equal(img.array, np.round(x * 255))
    gray = (np.arange(100).reshape(10, 10) * 2).astype(np.uint8)
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "rgb_gray.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb_gray.png").array, gray)
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(tmp_path / "red.jpg", quality=100)
    lum = read_image(tmp_path / "red.jpg").array
    assert lum.shape == (4, 4) and abs(lum.mean() - 0.299 * 200) < 6


def test_unreadable_and_truncated_images(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(MedImageError, match="junk.png: not a readable image"):
        read_image(tmp_path / "junk.png")
    data = (write_png8(tmp_path / "full.png", np.random.default_rng(0).random((64, 64)))).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(MedImageError, match="cut.png"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(MedImageError, match="missing.png: file not found"):
        read_image(tmp_path / "missing.png")


def test_truncated_dicom(tmp_path, ct_stored):
    data = write_ct_dicom(tmp_path / "ct.dcm", ct_stored).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-1000])
    with pytest.raises(MedImageError, match="cut.dcm"):
        read_image(tmp_path / "cut.dcm")


def test_nifti_slices(tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = np.zeros((20, 16, 6), np.float32)
    for k in (1, 2, 4):
        vol[:, :, k] = np.arange(20 * 16).reshape(20, 16) * (k + 1)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    slices, idx = read_nifti_slices(tmp_path / "v.nii.gz", return_indices=True)
    assert idx == [1, 2, 4]
    for s, k in zip(slices, idx):
        assert s.dtype == np.float32 and s.shape == (16, 20)
        np.testing.assert_array_equal(s, np.rot90(vol[:, :, k]))
    assert len(read_nifti_slices(tmp_path / "v.nii.gz", skip_empty=False)) == 6
    assert len(read_nifti_slices(tmp_path / "v.nii.gz", axis=0)) == 20
    np.testing.assert_array_equal(read_image(tmp_path / "v.nii.gz", frame=4).array, np.rot90(vol[:, :, 4]))


def test_error_keeps_one_line_through_torch_worker_wrapper():
    import pickle

    from torch._utils import ExceptionWrapper

    from medsd.data.errors import MissingPackageError

    try:
        try:
            raise OSError("inner\ncause")
        except OSError as e:
            raise MedImageError("/data/x.png: cannot decode image; expected a PNG") from e
    except MedImageError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 3")
    with pytest.raises(MedImageError) as info:
        wrapped.reraise()
    assert str(info.value) == "/data/x.png: cannot decode image; expected a PNG"
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is MedImageError and str(again) == str(info.value)
    assert str(MedImageError("a\n  b")) == "a b"
    assert issubclass(MissingPackageError, ImportError) and issubclass(MissingPackageError, MedImageError)
