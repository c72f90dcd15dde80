"""The tiny random Qwen2 model that tests and the CPU demo train instead of a real LLM.

No model hub is reachable from CI or the demo machines, so the project builds its own base model:
a random Qwen2 (hidden 64, 2 layers, 4 query / 2 key-value heads; ~210k parameters; the demo's
"demo" size has the same shapes with some frozen layers zeroed, see `ZEROED`) with a
byte-level BPE tokenizer trained here with `tokenizers`, the Qwen special tokens
(<|endoftext|>, <|im_start|>, <|im_end|>) and a ChatML chat template that renders exactly what
LLaMA-Factory's ``qwen`` template trains on. Byte-level BPE means every string tokenizes (unseen
characters fall back to bytes); the merges are learned on the instruction from conf/prompt.yaml,
the label names, a fixed set of common Chinese characters and every character of the synthetic data
(tests/support/synth.py), so prompts stay short and synthetic sentences are one token per character.

`build_tiny_model` is deterministic for a seed and idempotent: a directory that already holds a
complete build (marker file written last, directory renamed into place atomically) is returned
as is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retrain.config import Settings

log = logging.getLogger(__name__)

#: Bump when the build recipe changes; a directory built by another format is refused.
#: 2: the tokenizer covers every character of tests.support.synth; sizes ("tiny", "demo").
#: 3: "demo" is the tiny shape with zeroed frozen layers (`ZEROED`), no longer hidden 128.
TINY_MODEL_FORMAT = 3
MARKER_FILE = "retrain_tiny_model.json"
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    MARKER_FILE,
)

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
#: LLaMA-Factory's ``qwen`` template default system prompt (Qwen2.5's chat template has the same).
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

#: ChatML, as Qwen2.5 without tool calling: a system turn (the default one unless the first
#: message is a system message), then ``<|im_start|>role\ncontent<|im_end|>\n`` per message.
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if not (loop.first and message['role'] == 'system') -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

VOCAB_SIZE = 4096
HIDDEN_SIZE = 64
INTERMEDIATE_SIZE = 128
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_HEADS = 2
MAX_POSITIONS = 2048

#: Model sizes. "tiny" (~210k parameters) is what the tests train. "demo" has the same shapes and
#: tokenizer but a quiet start (`ZEROED`): it is what the demo and its end-to-end test train, because a
#: LoRA on it learns the synthetic task (tests/support/demo.py). Measured on 600 synthetic sentences
#: (397 trained, 12 epochs, LoRA rank 32 on all linear layers, lr 5e-3; first 60 golden sentences,
#: strict micro F1): tiny 0.17; zeroed o_proj/down_proj 0.30; zeroed q_proj/o_proj/down_proj 0.38
#: (0.78 after 20 epochs);
#: a wider model (hidden 128, zeroed o_proj/down_proj) 0.10 in twice the time; lr 1e-2 0.05-0.13 and
#: lr 2e-2 0.00 (diverged). December 2026, a shared 2-core machine.
_TINY_SHAPE = {
    "hidden_size": HIDDEN_SIZE,
    "intermediate_size": INTERMEDIATE_SIZE,
    "num_hidden_layers": NUM_LAYERS,
    "num_attention_heads": NUM_HEADS,
    "num_key_value_heads": NUM_KV_HEADS,
}
SIZES: dict[str, dict[str, int]] = {"tiny": _TINY_SHAPE, "demo": _TINY_SHAPE}  # "demo" differs in ZEROED

#: Frozen base weights set to zero after the random init, per size (names matched as substrings).
#: The base model is frozen under LoRA, and random frozen layers are noise the adapter must first
#: cancel: with the output projections of attention (o_proj) and MLP (down_proj) at zero every layer
#: starts as the identity on the residual stream, and with q_proj at zero every attention starts
#: uniform (keys stay random, so the adapter's queries get a gradient at once). The untrained model
#: then only echoes tokens: base-model F1 0, a clean "before" for the demo.
ZEROED: dict[str, tuple[str, ...]] = {"tiny": (), "demo": ("q_proj", "o_proj", "down_proj")}

#: ~1,200 common Chinese characters (sorted by code point): the characters of typical news, game,
#: film and company sentences of the CLUENER kind. Characters outside the set still tokenize, as
#: bytes; inside it each is one token.
COMMON_CHARS = (
    "一丁七万三上下不与专且世业东两严个中丰临丹为主丽举久么义之乌乎乐乔乘九也习乡书买了争事二于云五亚些亡交产享京亮亲人亿什仁"
    "仅今介仍从他付仙代令以们件价任份企伊伍休众优会伟传伤伦伯估似但位低住体何余佛作你佳使例供依侠便俄保信修俱倒候借值假做停健"
    "储像儿元兄充先光克免兑入全八公六兰共关兴兵其具典兽内册再冒写军农冠冰冲决况冷净准减几凯出击刀分切刊划列刘则刚创初判利别到"
    "制刷券刺刻前剑剧副力办功加务动助努势勇勒包化北区医十千升午半华协单卖南博占卡卫印危即却厅历压原厦去县参又及友双反发取受变"
    "口古另只叫召可台史右号司各合吉同名后向吗君否吧含听启吴吸告员呢周味命和品哈响哥售唯商善喜嘉器四回因团园困围国图圈土圣在地"
    "圳场址均坏坐块坚坛坡坦型埃城域培基堂堡塔塞境墅增士声处备复夏外多夜够大天太夫央失头夺奇奖套奥女她好如姆始委姜威娱媒子字存"
    "孙季学孩宁它宅守安完宏官定宜宝实审客宣室宫害家容宾密富察对寺寻导封射将小少尔尚尤就尼尽局层居届展属山岁岛岸峰川州工左巨差"
    "己已巴币市布帅师希帝带席帮常幅幕干平年并幸幻广庄庆序库应底店府度座庭康庸廉延建开异式引弟张弹强归当录形彩影役往征待很律徐"
    "得微德心必志快念态怎思急性怪总恐恩息悉您情惊惠想意感愿慢慧戏成我或战截户房所手才打托执扬扮批找承技把投抗折护报抵担拉拍招"
    "拜拟拥择括拿持指按挥损换据授掌排探接控推提揭搜携摄摇摩播操支收改攻放政故效敌教敦数整文斗料断斯新方施旅族旗无日旧早时昌明"
    "易星映春昨是显晋晓晚普景智暗暴曲更曹曼曾最月有朋服朗望朝期木未末本术朱机杀杂权李材村束条来杨杯杰松板极构析林果枪架某查标"
    "树校样核根格案桑桥梁梅梦检森楼概榜模次欢欣欧款歌止正此步武死段毁母每比毕毛民气水永求汇汉江沃沈沙没河油治沿法波注泰泽洋洛"
    "洞洲活派流测济浦浪海消涉润涨深清渐渔渣温港游湖湾源滑满滩演漫潜潮澳激火灯灵点烈热然照爆爱父片版牌牙物特状狂独率玉王玛玩环"
    "现珍珠班球理瑞瓦甚生用田由甲申电男画界留略疑病登白百的皇皮盈益监盖盗盘盛盟目直相省看真眼着督知短石码研破确碧示礼社神票福"
    "离秀私秋种科秘租积称移程税稳究空穿突立站竞竟章端笑笔第等筑答策签简算管篇米类精系素索紧紫累红约级纪纳纷纽线练组细织终绍经"
    "结给络绝统继绩续维综绿编缺网罗罪置署美群耀老考者而耶职联股肯育胆背胜胡能脑自至致航般舰船良色艺节花苏英范草荐荣荷莫莱获菲"
    "营萨落著董蒂蒙蓝藏虑虚虽融血行街衡补表被袭裁装西要见观规视览觉角解言誉警计订认讨让训议讯记讲许论设访证评识诉试话询该语说"
    "请诺读调谈谢谷象豪贝负财责败账货质购贵贷贸费资赏赔赛赢赫走起超越趣足跌跑距跟路身车转轮软轻载较辉输边达过迎运近还这进远连"
    "迪述迷迹追退送适选透逐通速造遇道遗遥遭邀那邮郑部郭都配酒采释里重野量金针钟钢钱铁银销锋错锡镇长门问间闻队防阳阵阶阿附际陆"
    "陈降限院除险隆随障难雄雅集雕雪雷需霍露霸青静非靠面革韩音顶项顺须顾顿预领频题额风飞餐馆首香马驻驾验高鬼魔鱼鲁鲜黄黎黑齐龙"
)

#: Chinese strings that appear around the data: annotation-tool label names and entity words.
_EXTRA_TEXTS = (
    "实体类别",
    "实体名称",
    "人名",
    "姓名",
    "组织",
    "组织机构",
    "地址",
    "公司",
    "政府",
    "书名",
    "电影",
    "游戏",
    "职位",
    "景点",
    "北京",
    "上海",
    "中国",
    "银行",
    "大学",
    "有限公司",
)
_JSON_PIECES = ('[{"label": "', '", "text": "', '"}, {"label": "', '"}]', "[]", "```json", "```")


def tokenizer_corpus(settings: Settings | None = None) -> list[str]:
    """The fixed training text of the tokenizer, in a fixed order (so the merges are deterministic).

    The rendered instruction and the label names come from conf/ through `load_settings()`.
    """
    if settings is None:
        from retrain.config import load_settings

        settings = load_settings()
    instruction = settings.prompt.render_instruction()
    labels = list(settings.prompt.labels)
    texts: list[str] = []
    # The prompt repeats in every example: many copies so its phrases merge into few tokens.
    texts += [instruction] * 50
    texts += [DEFAULT_SYSTEM, "system", "user", "assistant"] * 20
    texts += _JSON_PIECES * 20
    # Every label inside the JSON answer format, paired with entity-like words.
    words = list(_EXTRA_TEXTS) + [COMMON_CHARS[i : i + 3] for i in range(0, len(COMMON_CHARS), 7)]
    for i, word in enumerate(words):
        label = labels[i % len(labels)]
        texts.append(json.dumps([{"label": label, "text": word}], ensure_ascii=False))
    texts += labels * 20
    texts += list(settings.label_map) * 5
    texts += list(_EXTRA_TEXTS) * 5
    # Each character alone (twice, to pass min_frequency), so it becomes a single token without
    # spending merges on accidental character pairs.
    texts += [ch for ch in COMMON_CHARS] * 2
    # Every character of the synthetic data (tests.support.synth), so its sentences and answers are one
    # token per character, as they are for a real Qwen vocabulary: an entity split into UTF-8 bytes is
    # much harder for a model this small to copy into its answer.
    texts += [ch for ch in _synth_chars() if ch not in COMMON_CHARS] * 2
    texts += [str(d) for d in range(10)] * 2 + [
        "，",
        "。",
        "：",
        "、",
        "《",
        "》",
        "（",
        "）",
        "！",
        "？",
    ] * 2
    return texts


def _synth_chars() -> str:
    from tests.support.synth import ENTITIES, TEMPLATES

    words = [e for values in ENTITIES.values() for e in values] + TEMPLATES
    return "".join(sorted({ch for w in words for ch in w if ord(ch) > 127}))


def train_tokenizer(corpus: list[str], vocab_size: int = VOCAB_SIZE) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` with the three special tokens as ids 0, 1, 2."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_iter(corpus), trainer=trainer, length=len(corpus))
    return tok


def _iter(items: list[str]) -> Iterator[str]:
    yield from items


def is_complete(model_dir: str | Path) -> bool:
    """True when ``model_dir`` holds every file of a finished build (the marker is written last)."""
    d = Path(model_dir)
    return all((d / name).is_file() for name in REQUIRED_FILES)


def _read_marker(model_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((model_dir / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{model_dir / MARKER_FILE}: unreadable tiny-model marker: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _check_existing(out: Path, seed: int, size: str = "tiny") -> Path:
    marker = _read_marker(out)
    have = (marker.get("format"), marker.get("seed"), marker.get("size", "tiny"))
    if have != (TINY_MODEL_FORMAT, seed, size):
        raise ValueError(
            f"{out} already holds a tiny model built with format={have[0]} size={have[2]} seed={have[1]}; "
            f"asked for format={TINY_MODEL_FORMAT} size={size} seed={seed}. "
            "Use another directory or delete this one."
        )
    return out


def build_tiny_model(
    out_dir: str | Path, seed: int = 0, *, settings: Settings | None = None, size: str = "tiny"
) -> Path:
    """Build the tiny random Qwen2 model + tokenizer into ``out_dir`` and return its path.

    ``size``: a key of `SIZES` ("tiny", used by the tests; "demo", the same shapes with `ZEROED`
    layers, used by the demo). Deterministic for ``seed``
    and ``size`` (same weights, same tokenizer). If ``out_dir`` already holds a
    complete build with the same seed it is returned untouched; a non-empty directory that is
    not a complete build is refused rather than overwritten.
    """
    out = Path(out_dir).expanduser().resolve()
    if is_complete(out):
        log.info("tiny model already built in %s", out)
        return _check_existing(out, seed, size)
    if size not in SIZES:
        raise ValueError(f"unknown tiny-model size {size!r}: expected one of {sorted(SIZES)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        missing = [n for n in REQUIRED_FILES if not (out / n).is_file()]
        raise FileExistsError(
            f"{out} exists but is not a complete tiny model (missing {missing}); refusing to overwrite it"
        )

    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        tok = train_tokenizer(tokenizer_corpus(settings))
        ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            eos_token=IM_END,
            pad_token=ENDOFTEXT,
            chat_template=CHAT_TEMPLATE,
            model_max_length=MAX_POSITIONS,
            clean_up_tokenization_spaces=False,
        )
        tokenizer.save_pretrained(tmp)

        config = Qwen2Config(
            vocab_size=tok.get_vocab_size(),
            **SIZES[size],
            max_position_embeddings=MAX_POSITIONS,
            tie_word_embeddings=True,
            # With the default 0.02 the frozen, tied embeddings are so small that logits cannot move far
            # from uniform whatever LoRA learns (loss stuck near 6.7 of ln(vocab) 7.6); at 0.2 the same
            # LoRA run reaches loss ~1.5 in 160 steps, so "trained vs untrained" is measurable.
            initializer_range=0.2,
            bos_token_id=ids[ENDOFTEXT],
            eos_token_id=ids[IM_END],
            pad_token_id=ids[ENDOFTEXT],
            use_sliding_window=False,
        )
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if any(part in name for part in ZEROED[size]):
                    param.zero_()
        model.generation_config = GenerationConfig(
            bos_token_id=ids[ENDOFTEXT],
            eos_token_id=ids[IM_END],
            pad_token_id=ids[ENDOFTEXT],
            do_sample=False,
        )
        model.save_pretrained(tmp)
        n_params = sum(p.numel() for p in model.parameters())
        marker = {
            "format": TINY_MODEL_FORMAT,
            "seed": seed,
            "size": size,
            "zeroed": list(ZEROED[size]),
            "vocab_size": tok.get_vocab_size(),
            "parameters": n_params,
            "special_token_ids": ids,
        }
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the files are read by other users/containers
        for path in tmp.iterdir():
            os.chmod(path, 0o644)
        try:
            if out.is_dir():
                out.rmdir()  # empty (checked above)
            os.rename(tmp, out)
        except OSError:
            if is_complete(out):  # another process finished the same build first
                log.info("tiny model built concurrently in %s", out)
                return _check_existing(out, seed, size)
            raise
        log.info("built tiny model in %s (%d parameters, vocab %d)", out, n_params, tok.get_vocab_size())
        return out
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
