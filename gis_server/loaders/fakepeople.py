"""Vectorised fake personal data: Chinese-style names, ID numbers and mobile phones.

Everything takes a ``numpy.random.Generator`` so callers stay deterministic for a seed, and
works on whole arrays (hundreds of thousands of rows in well under a second).

* :func:`names` — a surname drawn from the most common Chinese surnames (weighted roughly by
  frequency) plus a one- or two-character given name (about 1 in 4 has one character);
  the given-name characters lean male or female with the ``genders`` array.
* :func:`id_numbers` — 18-character resident identity numbers in the GB 11643-1999 layout:
  6-digit area code, 8-digit birth date ``YYYYMMDD``, 3-digit sequence (odd for men, even for
  women) and the ISO 7064 MOD 11-2 check character (``0``–``9`` or ``X``).
  :func:`id_check_char` computes / verifies the check character.
* :func:`phones` — 11-digit mobile numbers with real-looking carrier prefixes (13x, 15x, 18x…).

The data is fake: area codes come from the caller (a loader's fictitious county code, or
:data:`HOME_AREA_CODES` for people registered elsewhere) and nothing refers to a real person.
"""
from __future__ import annotations

import numpy as np

# The most common surnames (a few compound ones), weights roughly proportional to their
# frequency (percent); given-name characters that lean male or female.
SURNAMES = np.array(
    ["王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴", "徐", "孙", "胡", "朱", "高",
     "林", "何", "郭", "马", "罗", "梁", "宋", "郑", "谢", "韩", "唐", "冯", "于", "董", "萧",
     "程", "曹", "袁", "邓", "许", "傅", "沈", "曾", "彭", "吕", "苏", "卢", "蒋", "蔡", "贾",
     "丁", "魏", "薛", "叶", "阎", "余", "潘", "杜", "戴", "夏", "钟", "汪", "田", "任", "姜",
     "范", "方", "石", "姚", "谭", "廖", "邹", "熊", "金", "陆", "郝", "孔", "白", "崔", "康",
     "毛", "邱", "秦", "江", "史", "顾", "侯", "邵", "孟", "龙", "万", "段", "雷", "钱", "汤",
     "欧阳", "司马", "诸葛", "上官"])
_SURNAME_WEIGHTS = np.concatenate([
    [7.3, 7.0, 6.8, 5.4, 4.5, 3.1, 2.3, 2.2, 2.1, 2.0, 1.8, 1.5, 1.3, 1.3, 1.2],
    np.linspace(1.1, 0.25, len(SURNAMES) - 15 - 4), [0.05, 0.02, 0.01, 0.01]])
SURNAME_P = _SURNAME_WEIGHTS / _SURNAME_WEIGHTS.sum()
MALE_CHARS = np.array(list(
    "伟强磊军勇杰涛斌超明刚平辉鹏华飞鑫波宇浩凯健俊帆帅旭宁龙林洋峰建国志文海东亮晨博阳"
    "子轩然睿泽宏毅兵彬鸣楠义卫成康星光天达安岩中茂进"))
FEMALE_CHARS = np.array(list(
    "芳娜敏静丽艳娟霞秀燕玲桂红英萍雪琳晶婷颖慧倩欣怡佳悦璐瑶雯蕾琪梦涵诗雨思月欢丹洁"
    "兰凤琴素云莉美淑惠珍贞莹菲薇媛"))

# real-looking mobile carrier prefixes
PHONE_PREFIXES = np.array([130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 150, 151, 152,
                           153, 155, 156, 157, 158, 159, 166, 176, 177, 178, 180, 181, 182,
                           183, 185, 186, 187, 188, 189, 198, 199])

# Area codes (GB/T 2260, district level) of a few large cities, used as the "home" of people
# registered elsewhere (floating population).
HOME_AREA_CODES = np.array([
    "110105", "120101", "130102", "140105", "210102", "220102", "230102", "310104", "320102",
    "330106", "340102", "350102", "360102", "370102", "410102", "420102", "430102", "440106",
    "450102", "500103", "510104", "520102", "530102", "610102", "620102"])

ID_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2], dtype=np.int64)
ID_CHECK_CHARS = np.array(list("10X98765432"))


def names(rng: np.random.Generator, genders: np.ndarray) -> np.ndarray:
    """One fake name per entry of ``genders`` (``"M"`` / ``"F"``), as an object array."""
    genders = np.asarray(genders)
    n = len(genders)
    surname = SURNAMES[rng.choice(len(SURNAMES), size=n, p=SURNAME_P)]
    male = genders == "M"
    first = np.where(male, MALE_CHARS[rng.integers(0, len(MALE_CHARS), n)],
                     FEMALE_CHARS[rng.integers(0, len(FEMALE_CHARS), n)])
    second = np.where(male, MALE_CHARS[rng.integers(0, len(MALE_CHARS), n)],
                      FEMALE_CHARS[rng.integers(0, len(FEMALE_CHARS), n)])
    second = np.where(rng.random(n) < 0.25, "", second)
    return np.char.add(np.char.add(surname, first), second).astype(object)


def random_genders(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.where(rng.random(n) < 0.5, "M", "F").astype(object)


def id_check_char(first17) -> np.ndarray:
    """GB 11643 check characters for an array of 17-digit strings."""
    arr = np.asarray(first17, dtype="U17")
    digits = arr.view("U1").reshape(len(arr), 17).astype(np.int64)
    return ID_CHECK_CHARS[(digits @ ID_WEIGHTS) % 11]


def group_rank(keys: np.ndarray) -> np.ndarray:
    """0-based rank of each element among equal keys, in original order (stable)."""
    keys = np.asarray(keys)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    start = np.r_[True, sk[1:] != sk[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(len(sk)), 0))
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(sk)) - first
    return rank


def id_numbers(rng: np.random.Generator, area_codes, birth_dates, genders) -> np.ndarray:
    """18-character ID numbers (valid check character) for the given people.

    ``area_codes``: 6-digit strings (one, or one per person); ``birth_dates``: ``datetime64``
    array; ``genders``: ``"M"``/``"F"`` (decides the parity of the sequence number).
    """
    genders = np.asarray(genders)
    n = len(genders)
    areas = np.broadcast_to(np.asarray(area_codes, dtype="U6"), (n,))
    born = np.asarray(birth_dates, dtype="datetime64[D]")
    ymd = np.char.replace(np.datetime_as_string(born, unit="D"), "-", "")
    # Sequence numbers are unique within (area, birth date, sex) — ID numbers identify people:
    # a random start per group, then consecutive numbers (500 per group and sex available).
    group = np.char.add(np.char.add(areas, ymd), genders.astype("U1"))
    _, inverse = np.unique(group, return_inverse=True)
    start = rng.integers(0, 500, inverse.max() + 1 if n else 0)
    slot = (start[inverse] + group_rank(inverse)) % 500
    seq = slot * 2 + np.where(genders == "M", 1, 0)  # 0..999, odd = male
    first17 = np.char.add(np.char.add(areas, ymd), np.char.zfill(seq.astype("U3"), 3))
    return np.char.add(first17, id_check_char(first17)).astype(object)


def is_valid_id_number(value: str) -> bool:
    """True when ``value`` is 18 characters with a correct GB 11643 check character."""
    if len(value) != 18 or not value[:17].isdigit():
        return False
    return str(id_check_char([value[:17]])[0]) == value[17].upper()


def phones(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` fake 11-digit mobile numbers."""
    prefix = PHONE_PREFIXES[rng.integers(0, len(PHONE_PREFIXES), n)].astype("U3")
    rest = np.char.zfill(rng.integers(0, 100_000_000, n).astype("U8"), 8)
    return np.char.add(prefix, rest).astype(object)
