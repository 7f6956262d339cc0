"""Picture size from H.264 and H.265 sequence parameter sets, sample rate from an AAC
AudioSpecificConfig. Pure functions on bytes, bounded by their input.

ffprobe reports the size the decoder outputs, which comes from the SPS (coded size minus the cropping
window), not the size the container claims; the MP4 reader compares both and falls back to ffprobe
when they differ. Where ffmpeg's decoders would adjust what the parameter set says (a left crop that
breaks alignment, an implicit SBR doubling of the AAC rate), these functions refuse instead.
"""

from __future__ import annotations

from edge.ingest.media.bits import BitReader, unescape_rbsp
from edge.ingest.media.errors import NotUnderstood

# H.264 profiles whose SPS carries chroma format, bit depths and scaling matrices (7.3.2.1.1).
_H264_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}
MAX_POC_CYCLE = 255
MAX_DIMENSION = 1 << 16


def _scaling_list(reader: BitReader, size: int) -> None:
    last, next_ = 8, 8
    for _ in range(size):
        if next_ != 0:
            next_ = (last + reader.se() + 256) % 256
        last = next_ if next_ != 0 else last


def _cropped(
    width: int, height: int, crop: tuple[int, int, int, int], step_x: int, step_y: int
) -> tuple[int, int]:
    left, right, top, bottom = crop
    if left:
        # ffmpeg moves an unaligned left edge; rather than guess its rule, let ffprobe say.
        raise NotUnderstood("a cropping window with a left offset")
    crop_w, crop_h = (left + right) * step_x, (top + bottom) * step_y
    if crop_w >= width or crop_h >= height:
        raise NotUnderstood(f"cropping window {crop} does not fit a {width}x{height} picture")
    return width - crop_w, height - crop_h


def _checked(width: int, height: int) -> tuple[int, int]:
    if not (0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION):
        raise NotUnderstood(f"implausible picture size {width}x{height}")
    return width, height


def h264_picture_size(sps_nal: bytes) -> tuple[int, int]:
    """(width, height) of the decoded picture from an H.264 SPS NAL unit (with its 1-byte header)."""
    if len(sps_nal) < 4 or sps_nal[0] & 0x1F != 7:
        raise NotUnderstood("not an H.264 sequence parameter set")
    reader = BitReader(unescape_rbsp(sps_nal[1:]))
    profile_idc = reader.bits(8)
    reader.skip(16)  # constraint flags, level_idc
    reader.ue()  # seq_parameter_set_id
    chroma_format_idc = 1
    separate_planes = False
    if profile_idc in _H264_HIGH_PROFILES:
        chroma_format_idc = reader.ue()
        if chroma_format_idc > 3:
            raise NotUnderstood(f"chroma_format_idc {chroma_format_idc}")
        if chroma_format_idc == 3:
            separate_planes = reader.flag()
        reader.ue()  # bit_depth_luma_minus8
        reader.ue()  # bit_depth_chroma_minus8
        reader.skip(1)  # qpprime_y_zero_transform_bypass_flag
        if reader.flag():  # seq_scaling_matrix_present_flag
            for index in range(12 if chroma_format_idc == 3 else 8):
                if reader.flag():
                    _scaling_list(reader, 16 if index < 6 else 64)
    reader.ue()  # log2_max_frame_num_minus4
    poc_type = reader.ue()
    if poc_type == 0:
        reader.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        reader.skip(1)
        reader.se()
        reader.se()
        cycle = reader.ue()
        if cycle > MAX_POC_CYCLE:
            raise NotUnderstood(f"{cycle} reference frames in the picture order cycle")
        for _ in range(cycle):
            reader.se()
    elif poc_type != 2:
        raise NotUnderstood(f"pic_order_cnt_type {poc_type}")
    reader.ue()  # max_num_ref_frames
    reader.skip(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = reader.ue() + 1
    height_map_units = reader.ue() + 1
    frame_mbs_only = reader.flag()
    if not frame_mbs_only:
        reader.skip(1)  # mb_adaptive_frame_field_flag
    reader.skip(1)  # direct_8x8_inference_flag
    width = width_mbs * 16
    height = (1 if frame_mbs_only else 2) * height_map_units * 16
    if width > MAX_DIMENSION or height > MAX_DIMENSION:
        raise NotUnderstood(f"implausible coded size {width}x{height}")
    if reader.flag():  # frame_cropping_flag
        crop = (reader.ue(), reader.ue(), reader.ue(), reader.ue())
        mono = chroma_format_idc == 0 or separate_planes
        step_x = 1 if mono or chroma_format_idc == 3 else 2
        step_y = (1 if frame_mbs_only else 2) * (2 if chroma_format_idc == 1 and not mono else 1)
        width, height = _cropped(width, height, crop, step_x, step_y)
    return _checked(width, height)


def hevc_picture_size(sps_nal: bytes) -> tuple[int, int]:
    """(width, height) of the decoded picture from an H.265 SPS NAL unit (with its 2-byte header).

    ffmpeg applies the conformance window but not the VUI's default display window (its
    `apply_defdispwin` is off by default), so neither does this."""
    if len(sps_nal) < 4 or (sps_nal[0] >> 1) & 0x3F != 33:
        raise NotUnderstood("not an H.265 sequence parameter set")
    reader = BitReader(unescape_rbsp(sps_nal[2:]))
    reader.skip(4)  # sps_video_parameter_set_id
    max_sub_layers_minus1 = reader.bits(3)
    reader.skip(1)  # sps_temporal_id_nesting_flag
    # profile_tier_level(1, max_sub_layers_minus1)
    reader.skip(88)  # general profile space, tier, profile, compatibility and constraint flags
    reader.skip(8)  # general_level_idc
    present = [(reader.flag(), reader.flag()) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1 > 0:
        reader.skip(2 * (8 - max_sub_layers_minus1))
    for profile_present, level_present in present:
        reader.skip((88 if profile_present else 0) + (8 if level_present else 0))
    reader.ue()  # sps_seq_parameter_set_id
    chroma_format_idc = reader.ue()
    if chroma_format_idc > 3:
        raise NotUnderstood(f"chroma_format_idc {chroma_format_idc}")
    separate_planes = reader.flag() if chroma_format_idc == 3 else False
    width, height = reader.ue(), reader.ue()
    if not (0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION):
        raise NotUnderstood(f"implausible coded size {width}x{height}")
    if reader.flag():  # conformance_window_flag
        crop = (reader.ue(), reader.ue(), reader.ue(), reader.ue())
        mono = chroma_format_idc == 0 or separate_planes
        step_x = 2 if chroma_format_idc in (1, 2) and not mono else 1
        step_y = 2 if chroma_format_idc == 1 and not mono else 1
        width, height = _cropped(width, height, crop, step_x, step_y)
    return _checked(width, height)


_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
AAC_LC = 2
# At or below this core rate an AAC-LC stream may carry implicit SBR, which ffmpeg's decoder detects
# from the audio itself and then reports twice the rate; only ffprobe can say.
MAX_IMPLICIT_SBR_RATE = 24000


# channelConfiguration 1..7 (ISO 14496-3 table 1.19); 0 means a program config element follows.
_AAC_CHANNELS = (0, 1, 2, 3, 4, 5, 6, 8)


def aac_rate_and_channels(config: bytes) -> tuple[int, int]:
    """Sample rate and channel count of an AAC-LC AudioSpecificConfig (ISO 14496-3 1.6.2.1)."""
    reader = BitReader(config)
    object_type = reader.bits(5)
    if object_type == 31:
        object_type = 32 + reader.bits(6)
    if object_type != AAC_LC:
        raise NotUnderstood(f"AAC audio object type {object_type} (only LC is read in-process)")
    index = reader.bits(4)
    rate = reader.bits(24) if index == 15 else (_AAC_RATES[index] if index < len(_AAC_RATES) else 0)
    if rate <= MAX_IMPLICIT_SBR_RATE or rate > 96000:
        raise NotUnderstood(f"AAC-LC at {rate} Hz")
    configuration = reader.bits(4)
    if not 1 <= configuration < len(_AAC_CHANNELS):
        raise NotUnderstood(f"AAC channel configuration {configuration}")
    return rate, _AAC_CHANNELS[configuration]
