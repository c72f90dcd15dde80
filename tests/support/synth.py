"""Synthetic CLUENER-format labeled batches, so the demo and unit tests need nothing from outside.

Sentences come from the project's own templates with entity slots; entity strings come from the
project's own lists for the 10 labels. Offsets are computed, never typed by hand, so every good
record is valid; ``bad_per_batch`` appends deliberately broken records (one of each kind in turn)
so that quarantine is exercised on every batch.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ENTITIES: dict[str, list[str]] = {
    "name": [
        "张伟",
        "王芳",
        "李娜",
        "刘洋",
        "陈静",
        "杨磊",
        "赵敏",
        "黄强",
        "周杰",
        "吴琳",
        "叶老桂",
        "孙悦",
    ],
    "organization": [
        "中国足协",
        "红十字会",
        "北京大学",
        "国际奥委会",
        "作家协会",
        "曼联",
        "联合国",
        "中科院",
    ],
    "scene": ["故宫", "西湖", "长城", "黄山", "卢浮宫", "九寨沟", "颐和园", "泰山"],
    "company": ["浙商银行", "阿里巴巴", "腾讯公司", "华为", "中国移动", "万科集团", "小米科技", "招商银行"],
    "movie": ["《流浪地球》", "《霸王别姬》", "《让子弹飞》", "《英雄》", "《无间道》", "《功夫》"],
    "book": ["《红楼梦》", "《三体》", "《围城》", "《活着》", "《平凡的世界》", "《边城》"],
    "government": ["国务院", "教育部", "商务部", "北京市政府", "最高人民法院", "财政部", "公安部"],
    "position": ["记者", "总经理", "教授", "董事长", "主任", "市长", "教练", "研究员"],
    "address": ["上海", "北京市朝阳区", "广州", "深圳南山区", "杭州", "成都", "武汉", "南京"],
    "game": ["《王者荣耀》", "《英雄联盟》", "《魔兽世界》", "《原神》", "《星际争霸》", "《梦幻西游》"],
}

# {label} slots; each template names the labels it uses in order.
TEMPLATES: list[str] = [
    "{company}{position}{name}表示，公司将在{address}设立新的研发中心。",
    "{name}昨天在{scene}参观时接受了{organization}的采访。",
    "{government}发布通知，要求{address}各地加强管理。",
    "{name}主演的{movie}在{address}首映，票房表现亮眼。",
    "作家{name}的{book}再版，{organization}为此举办了座谈会。",
    "{company}宣布与{organization}合作，推出新版{game}。",
    "据{government}消息，{position}{name}将前往{address}考察。",
    "周末很多游客前往{scene}，{address}的酒店几乎满员。",
    "{game}的职业联赛今年在{address}举行，{company}是主要赞助商。",
    "{position}{name}认为，{book}改编的{movie}忠实于原著。",
    "{organization}邀请{name}担任{position}，负责青年培训工作。",
    "{company}在{address}的门店开业，{position}{name}出席了仪式。",
]

BAD_KINDS = ["unknown_label", "span_mismatch", "empty_text", "not_json", "offset_out_of_range"]


def _fill(template: str, rng: random.Random) -> dict:
    text = ""
    labels: dict[str, dict[str, list[list[int]]]] = {}
    rest = template
    while "{" in rest:
        before, _, after = rest.partition("{")
        label, _, rest = after.partition("}")
        text += before
        entity = rng.choice(ENTITIES[label])
        start = len(text)
        text += entity
        labels.setdefault(label, {}).setdefault(entity, []).append([start, start + len(entity) - 1])
    text += rest
    return {"text": text, "label": labels}


def _bad_line(kind: str, rng: random.Random) -> str:
    good = _fill(rng.choice(TEMPLATES), rng)
    if kind == "unknown_label":
        label = next(iter(good["label"]))
        good["label"]["weapon"] = good["label"].pop(label)
        return json.dumps(good, ensure_ascii=False)
    if kind == "span_mismatch":
        label = next(iter(good["label"]))
        ent, spans = next(iter(good["label"][label].items()))
        good["label"][label] = {ent: [[spans[0][0] + 1, spans[0][1] + 1]]}
        return json.dumps(good, ensure_ascii=False)
    if kind == "empty_text":
        return json.dumps({"text": "", "label": {}}, ensure_ascii=False)
    if kind == "offset_out_of_range":
        return json.dumps({"text": "短句", "label": {"name": {"张伟": [[5, 6]]}}}, ensure_ascii=False)
    return '{"text": "这一行不是完整的JSON", "label": {'


def make_batch(records: int, seed: int, bad: int = 0) -> list[str]:
    """``records`` good JSON lines followed by ``bad`` broken ones (cycling through BAD_KINDS)."""
    rng = random.Random(seed)
    lines = [json.dumps(_fill(rng.choice(TEMPLATES), rng), ensure_ascii=False) for _ in range(records)]
    lines += [_bad_line(BAD_KINDS[i % len(BAD_KINDS)], rng) for i in range(bad)]
    return lines


def write_batches(
    out_dir: str | Path, batches: int = 1, records: int = 200, seed: int = 0, bad_per_batch: int = 0
) -> list[Path]:
    """Write ``batches`` files ``batch-XXX.json`` (CLUENER JSON lines) and return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for b in range(batches):
        path = out / f"batch-{seed:03d}-{b:03d}.json"
        path.write_text(
            "\n".join(make_batch(records, seed * 1000 + b, bad_per_batch)) + "\n", encoding="utf-8"
        )
        paths.append(path)
    return paths
