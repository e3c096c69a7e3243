"""Generate the built-in sample data (our own text, seeded; the generated files are committed too).

    python data/sample/make_sample.py      # rewrites data/sample/*.json* and data/sample/lawbench/

Everything here is written by us: synthetic judgment facts built from templates, consultation Q&A, exam questions,
general instructions, and real statute articles (statutes are public domain). A few records are planted for the
filters to drop (short answers, no statute cited, exact duplicates) and a few overlap the tiny LawBench set in
lawbench/ so decontamination is visibly exercised.
"""
import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
rng = random.Random(2024)

SURNAMES = "张王李赵刘陈杨黄周吴徐孙马朱胡郭何林罗高"
CITIES = ["北京市朝阳区", "上海市浦东新区", "广州市天河区", "杭州市西湖区", "成都市武侯区", "南京市鼓楼区",
          "武汉市洪山区", "西安市雁塔区", "长沙市岳麓区", "郑州市金水区"]
PLACES = ["某小区", "某超市", "某网吧", "某商场", "某菜市场", "某停车场", "某出租屋", "某工地"]


def person():
    return rng.choice(SURNAMES) + "某" + rng.choice("甲乙丙丁某")


def when():
    return f"{rng.randint(2014, 2019)}年{rng.randint(1, 12)}月{rng.randint(1, 28)}日{rng.randint(0, 23)}时许"


# ---- judgments (CAIL2018 format) --------------------------------------------------------------------------------------
# (charge label as CAIL writes it, articles, fact template, term range in months, share of life / death sentences)
CHARGES = [
    ("盗窃", [264], "{t}，被告人{a}在{c}{p}内，趁无人注意秘密窃取被害人{v}放置在桌上的手机一部及现金{m}元，"
     "经鉴定，被盗财物共计价值人民币{m2}元。案发后，被告人{a}被公安机关抓获，赃物已发还被害人。", (6, 42), 0, 0),
    ("诈骗", [266], "{t}，被告人{a}以帮助办理贷款为由，虚构事实、隐瞒真相，骗取被害人{v}“手续费”人民币{m2}元，"
     "所得款项被其用于个人挥霍。后被告人{a}在{c}被抓获，到案后如实供述了犯罪事实。", (8, 60), 0, 0),
    ("故意伤害", [234], "{t}，被告人{a}在{c}{p}门口因琐事与被害人{v}发生争执，被告人{a}持木棒殴打{v}头部，"
     "致{v}颅骨骨折。经鉴定，被害人{v}的伤情构成轻伤一级。案发后被告人{a}主动投案。", (6, 36), 0, 0),
    ("危险驾驶", [133], "{t}，被告人{a}酒后驾驶小型轿车行驶至{c}某路口时被民警查获。经鉴定，被告人{a}血液中"
     "乙醇含量为{b}mg/100ml，属醉酒驾驶机动车。", (1, 5), 0, 0),
    ("交通肇事", [133], "{t}，被告人{a}驾驶重型货车在{c}某路段违反交通信号灯通行，与被害人{v}驾驶的电动自行车相撞，"
     "致{v}经抢救无效死亡。经交警部门认定，被告人{a}负事故全部责任，事故发生后被告人{a}驾车逃逸。", (24, 60), 0, 0),
    ("抢劫", [263], "{t}，被告人{a}在{c}{p}附近，持水果刀对被害人{v}进行威胁，当场劫取{v}现金{m}元及手机一部，"
     "后被告人{a}被巡逻民警抓获。", (36, 120), 0.05, 0),
    ("故意杀人", [232], "{t}，被告人{a}因感情纠纷对被害人{v}怀恨在心，携带事先准备的尖刀来到{c}{p}，"
     "持刀朝{v}胸部、腹部连刺数刀，致{v}当场死亡。作案后被告人{a}逃离现场，后被抓获。", (120, 180), 0.4, 0.3),
    ("[走私、贩卖、运输、制造]毒品", [347], "{t}，被告人{a}在{c}{p}以人民币{m}元的价格向吸毒人员{v}贩卖毒品"
     "甲基苯丙胺{g}克，交易完成后被公安民警当场抓获，并从其身上查获毒品甲基苯丙胺{g2}克。", (6, 180), 0.1, 0.05),
    ("寻衅滋事", [293], "{t}，被告人{a}酒后在{c}{p}无故滋事，随意殴打在场的被害人{v}等人，并损毁店内物品，"
     "造成恶劣社会影响。经鉴定，被害人{v}的伤情构成轻微伤。", (6, 36), 0, 0),
    ("容留他人吸毒", [354], "{t}，被告人{a}先后两次在其位于{c}的出租屋内容留{v}等人吸食甲基苯丙胺，"
     "后被公安民警当场查获。", (6, 18), 0, 0),
]


def judgments(n=140):
    out = []
    for i in range(n):
        label, arts, tpl, (lo, hi), p_life, p_death = CHARGES[i % len(CHARGES)]
        a, v = person(), person()
        fact = (rng.choice(CITIES).replace("区", "区人民检察院指控：") + tpl.format(
            t=when(), a=a, v=v, c=rng.choice(CITIES), p=rng.choice(PLACES), m=rng.randint(200, 5000),
            m2=rng.randint(3000, 90000), b=rng.randint(81, 260), g=rng.randint(1, 60), g2=rng.randint(1, 30)))
        r = rng.random()
        death, life = r < p_death, p_death <= r < p_death + p_life
        term = 0 if (death or life) else rng.randint(lo, hi)
        accusation, articles = [label], list(arts)
        if label == "盗窃" and rng.random() < 0.15:  # a few two-charge records, and CAIL's repeated article quirk
            fact += f"此外，被告人{a}还虚构事实骗取他人财物人民币{rng.randint(3000, 20000)}元。"
            accusation, articles, term = ["盗窃", "诈骗"], [264, 266, 264], term + 6
        out.append({"fact": fact, "meta": {"relevant_articles": articles, "accusation": accusation,
                                           "punish_of_money": rng.choice([0, 1000, 2000, 5000]), "criminals": [a],
                                           "term_of_imprisonment": {"death_penalty": death, "imprisonment": term,
                                                                    "life_imprisonment": life}}})
    out.append(dict(out[3]))  # an exact duplicate: dedup must drop it
    return out


# ---- statutes (real article text; public domain) ---------------------------------------------------------------------
CRIM = ("刑法", "第二编 分则")
ARTICLES = [
    ("刑法", "第一编 总则", "第一章 刑法的任务、基本原则和适用范围", 3, 0,
     "法律明文规定为犯罪行为的，依照法律定罪处刑；法律没有明文规定为犯罪行为的，不得定罪处刑。"),
    ("刑法", "第一编 总则", "第一章 刑法的任务、基本原则和适用范围", 4, 0, "对任何人犯罪，在适用法律上一律平等。不允许任何人有超越法律的特权。"),
    ("刑法", "第一编 总则", "第一章 刑法的任务、基本原则和适用范围", 5, 0, "刑罚的轻重，应当与犯罪分子所犯罪行和承担的刑事责任相适应。"),
    ("刑法", "第一编 总则", "第二章 犯罪", 14, 0, "明知自己的行为会发生危害社会的结果，并且希望或者放任这种结果发生，因而构成犯罪的，"
     "是故意犯罪。\n故意犯罪，应当负刑事责任。"),
    ("刑法", "第一编 总则", "第四章 刑罚的具体运用", 67, 0, "犯罪以后自动投案，如实供述自己的罪行的，是自首。对于自首的犯罪分子，"
     "可以从轻或者减轻处罚。其中，犯罪较轻的，可以免除处罚。"),
    ("刑法", "第二编 分则", "第二章 危害公共安全罪", 133, 0, "违反交通运输管理法规，因而发生重大事故，致人重伤、死亡或者使公私财产"
     "遭受重大损失的，处三年以下有期徒刑或者拘役；交通运输肇事后逃逸或者有其他特别恶劣情节的，处三年以上七年以下有期徒刑；"
     "因逃逸致人死亡的，处七年以上有期徒刑。"),
    ("刑法", "第二编 分则", "第二章 危害公共安全罪", 133, 1, "在道路上驾驶机动车，有下列情形之一的，处拘役，并处罚金：\n"
     "（一）追逐竞驶，情节恶劣的；\n（二）醉酒驾驶机动车的；\n（三）从事校车业务或者旅客运输，严重超过额定乘员载客，"
     "或者严重超过规定时速行驶的；\n（四）违反危险化学品安全管理规定运输危险化学品，危及公共安全的。"),
    ("刑法", "第二编 分则", "第四章 侵犯公民人身权利、民主权利罪", 232, 0, "故意杀人的，处死刑、无期徒刑或者十年以上有期徒刑；"
     "情节较轻的，处三年以上十年以下有期徒刑。"),
    ("刑法", "第二编 分则", "第四章 侵犯公民人身权利、民主权利罪", 234, 0, "故意伤害他人身体的，处三年以下有期徒刑、拘役或者管制。\n"
     "犯前款罪，致人重伤的，处三年以上十年以下有期徒刑；致人死亡或者以特别残忍手段致人重伤造成严重残疾的，"
     "处十年以上有期徒刑、无期徒刑或者死刑。本法另有规定的，依照规定。"),
    ("刑法", "第二编 分则", "第五章 侵犯财产罪", 263, 0, "以暴力、胁迫或者其他方法抢劫公私财物的，处三年以上十年以下有期徒刑，"
     "并处罚金；有下列情形之一的，处十年以上有期徒刑、无期徒刑或者死刑，并处罚金或者没收财产：\n（一）入户抢劫的；\n"
     "（二）在公共交通工具上抢劫的；\n（三）抢劫银行或者其他金融机构的；\n（四）多次抢劫或者抢劫数额巨大的；\n"
     "（五）抢劫致人重伤、死亡的；\n（六）冒充军警人员抢劫的；\n（七）持枪抢劫的；\n（八）抢劫军用物资或者抢险、救灾、救济物资的。"),
    ("刑法", "第二编 分则", "第五章 侵犯财产罪", 264, 0, "盗窃公私财物，数额较大的，或者多次盗窃、入户盗窃、携带凶器盗窃、"
     "扒窃的，处三年以下有期徒刑、拘役或者管制，并处或者单处罚金；数额巨大或者有其他严重情节的，处三年以上十年以下有期徒刑，"
     "并处罚金；数额特别巨大或者有其他特别严重情节的，处十年以上有期徒刑或者无期徒刑，并处罚金或者没收财产。"),
    ("刑法", "第二编 分则", "第五章 侵犯财产罪", 266, 0, "诈骗公私财物，数额较大的，处三年以下有期徒刑、拘役或者管制，"
     "并处或者单处罚金；数额巨大或者有其他严重情节的，处三年以上十年以下有期徒刑，并处罚金；数额特别巨大或者有其他特别严重"
     "情节的，处十年以上有期徒刑或者无期徒刑，并处罚金或者没收财产。本法另有规定的，依照规定。"),
    ("刑法", "第二编 分则", "第六章 妨害社会管理秩序罪", 293, 0, "有下列寻衅滋事行为之一，破坏社会秩序的，处五年以下有期徒刑、"
     "拘役或者管制：\n（一）随意殴打他人，情节恶劣的；\n（二）追逐、拦截、辱骂、恐吓他人，情节恶劣的；\n"
     "（三）强拿硬要或者任意损毁、占用公私财物，情节严重的；\n（四）在公共场所起哄闹事，造成公共场所秩序严重混乱的。\n"
     "纠集他人多次实施前款行为，严重破坏社会秩序的，处五年以上十年以下有期徒刑，可以并处罚金。"),
    ("刑法", "第二编 分则", "第六章 妨害社会管理秩序罪", 354, 0, "容留他人吸食、注射毒品的，处三年以下有期徒刑、拘役或者管制，"
     "并处罚金。"),
    ("宪法", "第一章 总纲", None, 1, 0, "中华人民共和国是工人阶级领导的、以工农联盟为基础的人民民主专政的社会主义国家。\n"
     "社会主义制度是中华人民共和国的根本制度。中国共产党领导是中国特色社会主义最本质的特征。禁止任何组织或者个人破坏社会主义制度。"),
    ("宪法", "第一章 总纲", None, 2, 0, "中华人民共和国的一切权力属于人民。\n人民行使国家权力的机关是全国人民代表大会和地方各级"
     "人民代表大会。\n人民依照法律规定，通过各种途径和形式，管理国家事务，管理经济和文化事业，管理社会事务。"),
    ("宪法", "第二章 公民的基本权利和义务", None, 33, 0, "凡具有中华人民共和国国籍的人都是中华人民共和国公民。\n"
     "中华人民共和国公民在法律面前一律平等。\n国家尊重和保障人权。\n任何公民享有宪法和法律规定的权利，同时必须履行宪法和法律规定的义务。"),
    ("宪法", "第二章 公民的基本权利和义务", None, 42, 0, "中华人民共和国公民有劳动的权利和义务。"),
    ("民法典", "第五编 婚姻家庭", "第一章 一般规定", 1041, 0, "婚姻家庭受国家保护。\n实行婚姻自由、一夫一妻、男女平等的婚姻制度。\n"
     "保护妇女、未成年人、老年人、残疾人的合法权益。"),
    ("民法典", "第五编 婚姻家庭", "第四章 离婚", 1076, 0, "夫妻双方自愿离婚的，应当签订书面离婚协议，并亲自到婚姻登记机关申请"
     "离婚登记。\n离婚协议应当载明双方自愿离婚的意思表示和对子女抚养、财产以及债务处理等事项协商一致的意见。"),
    ("民法典", "第五编 婚姻家庭", "第四章 离婚", 1084, 0, "父母与子女间的关系，不因父母离婚而消除。离婚后，子女无论由父或者母"
     "直接抚养，仍是父母双方的子女。"),
    ("民法典", "第一编 总则", "第一章 基本规定", 1, 0, "为了保护民事主体的合法权益，调整民事关系，维护社会和经济秩序，适应中国"
     "特色社会主义发展要求，弘扬社会主义核心价值观，根据宪法，制定本法。"),
    ("民法典", "第三编 合同", "第一章 一般规定", 464, 0, "合同是民事主体之间设立、变更、终止民事法律关系的协议。"),
    ("劳动法", "第一章 总则", None, 3, 0, "劳动者享有平等就业和选择职业的权利、取得劳动报酬的权利、休息休假的权利、获得劳动安全卫生"
     "保护的权利、接受职业技能培训的权利、享受社会保险和福利的权利、提请劳动争议处理的权利以及法律规定的其他劳动权利。\n"
     "劳动者应当完成劳动任务，提高职业技能，执行劳动安全卫生规程，遵守劳动纪律和职业道德。"),
    ("劳动法", "第四章 工作时间和休息休假", None, 36, 0, "国家实行劳动者每日工作时间不超过八小时、平均每周工作时间不超过"
     "四十四小时的工时制度。"),
    ("劳动合同法", "第二章 劳动合同的订立", None, 10, 0, "建立劳动关系，应当订立书面劳动合同。\n已建立劳动关系，未同时订立"
     "书面劳动合同的，应当自用工之日起一个月内订立书面劳动合同。\n用人单位与劳动者在用工前订立劳动合同的，劳动关系自用工之日起建立。"),
    ("劳动合同法", "第七章 法律责任", None, 82, 0, "用人单位自用工之日起超过一个月不满一年未与劳动者订立书面劳动合同的，"
     "应当向劳动者每月支付二倍的工资。\n用人单位违反本法规定不与劳动者订立无固定期限劳动合同的，自应当订立无固定期限劳动合同"
     "之日起向劳动者每月支付二倍的工资。"),
    ("刑事诉讼法", "第一编 总则", "第一章 任务和基本原则", 12, 0, "未经人民法院依法判决，对任何人都不得确定有罪。"),
    ("民事诉讼法", "第一编 总则", "第一章 任务、适用范围和基本原则", 8, 0, "民事诉讼当事人有平等的诉讼权利。人民法院审理民事案件，"
     "应当保障和便利当事人行使诉讼权利，对当事人在适用法律上一律平等。"),
]


def cn(n):
    d = "零一二三四五六七八九"
    if n < 10:
        return d[n]
    if n < 20:
        return "十" + (d[n - 10] if n > 10 else "")
    out, zero = "", False
    for v, u in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        q, n = divmod(n, v)
        if q:
            out += ("零" if zero else "") + d[q] + u
            zero = False
        elif out:
            zero = True
    return out


def statutes():
    return [{"law": law, "part": part, "chapter": ch, "section": None,
             "article_cn": f"第{cn(num)}条" + (f"之{cn(sub)}" if sub else ""), "article_num": num, "article_sub": sub,
             "text": text} for law, part, ch, num, sub, text in ARTICLES]


# ---- consultations ---------------------------------------------------------------------------------------------------
CONSULT = [
    ("朋友借了我五万元一直不还，我该怎么办？", "根据《民法典》第六百七十五条，借款人应当按照约定的期限返还借款。朋友到期不还，"
     "您可以先发催款函保留证据，协商不成的，可以依据借条、转账记录向人民法院提起民事诉讼，要求返还借款并支付逾期利息。"),
    ("公司不和我签劳动合同，可以要求赔偿吗？", "可以。根据《劳动合同法》第八十二条，用人单位自用工之日起超过一个月不满一年"
     "未与劳动者订立书面劳动合同的，应当向劳动者每月支付二倍的工资。您可以保留工资条、考勤记录等证据，向劳动争议仲裁委员会申请仲裁。"),
    ("喝了酒开车被查到会坐牢吗？", "如果血液酒精含量达到80mg/100ml以上，属于醉酒驾驶，依照《刑法》第一百三十三条之一，"
     "构成危险驾驶罪，处拘役，并处罚金。酒精含量在20至80之间属于饮酒驾驶，依照《道路交通安全法》给予罚款、暂扣驾驶证等行政处罚。"),
    ("协议离婚需要准备什么？", "依照《民法典》第一千零七十六条，夫妻双方自愿离婚的，应当签订书面离婚协议，并亲自到婚姻登记"
     "机关申请离婚登记。协议应写明自愿离婚的意思表示以及子女抚养、财产和债务处理的意见，同时携带身份证、户口簿和结婚证。"),
    ("每天加班到晚上十点合法吗？", "不合法。《劳动法》第三十六条规定劳动者每日工作时间不超过八小时、平均每周不超过四十四小时；"
     "第四十一条规定延长工作时间一般每日不得超过一小时，特殊原因每日不得超过三小时，每月不得超过三十六小时。超时加班可以要求支付加班费。"),
    ("手机在网吧被偷了，小偷会判多久？", "盗窃公私财物数额较大的，依照《刑法》第二百六十四条，处三年以下有期徒刑、拘役或者管制，"
     "并处或者单处罚金。具体刑期取决于被盗手机的价值、是否多次盗窃以及是否有自首、退赃等情节。建议您尽快报警并提供购机凭证。"),
    ("被人打成轻伤，对方要承担什么责任？", "故意伤害他人身体致人轻伤的，依照《刑法》第二百三十四条，处三年以下有期徒刑、拘役"
     "或者管制。同时，根据《民法典》第一千一百七十九条，您可以要求对方赔偿医疗费、护理费、误工费等合理费用。"),
    ("离婚后孩子的抚养费怎么算？", "依照《民法典》第一千零八十五条，离婚后子女由一方直接抚养的，另一方应当负担部分或者全部"
     "抚养费，数额由双方协议；协议不成的由人民法院判决。一般按照给付方月总收入的百分之二十至三十确定。"),
    ("网购收到假货，商家拒绝退款怎么办？", "经营者提供商品有欺诈行为的，依照《消费者权益保护法》第五十五条，消费者可以要求增加"
     "赔偿其受到的损失，增加赔偿的金额为购买商品价款的三倍；不足五百元的，为五百元。可以向市场监管部门投诉或者起诉。"),
    ("试用期可以随便辞退员工吗？", "不可以。依照《劳动合同法》第二十一条，在试用期中，除劳动者有本法第三十九条和第四十条"
     "第一项、第二项规定的情形外，用人单位不得解除劳动合同。用人单位在试用期解除劳动合同的，应当向劳动者说明理由。"),
    ("房东不退押金怎么办？", "租赁期满，承租人按约定返还房屋且无违约情形的，出租人应当退还押金。依照《民法典》合同编的规定，"
     "您可以与房东协商，协商不成可以向人民法院起诉要求返还押金，并保留租赁合同、付款记录和交房照片作为证据。"),
    ("别人冒充公检法骗了我的钱，能追回吗？", "这是典型的电信诈骗。诈骗公私财物数额较大的，依照《刑法》第二百六十六条处罚。"
     "请立即报警并联系银行冻结账户，公安机关侦破案件后会依法追缴赃款并发还被害人。"),
]
DROPS = [("借钱不还怎么办？", "起诉。"),  # short answer
         ("邻居装修太吵怎么办？", "可以先和邻居沟通，协商装修时间，如果沟通无效可以找物业或者社区居委会帮助调解处理。"),  # no 《
         ("老人摔倒了扶不扶？", "应当扶，见义勇为是中华民族的传统美德，遇到困难的老人应当伸出援手，必要时拨打急救电话《120》。"),  # no 法
         ("工资被拖欠了？", "找《劳动法》。")]  # short


def consultations():
    out = [{"question": q, "answer": a} for q, a in CONSULT]
    for q, a in CONSULT[:6]:  # the same questions asked differently
        out.append({"question": "请问律师：" + q, "answer": a})
    out += [{"question": q, "answer": a} for q, a in DROPS]
    out.append(dict(out[0]))  # duplicate
    return out


def consultations_laws():
    """query / response (+ laws) format."""
    return [{"query": "我想咨询一下：" + q, "laws": [f"《{law}》{art}：{text}"], "response": a}
            for (q, a), (law, art, text) in zip(CONSULT[6:], [
                ("刑法", "第二百三十四条", ARTICLES[8][5]), ("民法典", "第一千零八十四条", ARTICLES[20][5]),
                ("刑法", "第二百六十四条", ARTICLES[10][5]), ("劳动合同法", "第十条", ARTICLES[25][5]),
                ("民法典", "第四百六十四条", ARTICLES[22][5]), ("刑法", "第二百六十六条", ARTICLES[11][5])])]


# ---- LawBench-style tasks (instruction / question / answer) and the tiny LawBench eval set --------------------------
ART_INS = "请你模仿法律专家，根据下列事实和罪名给出符合的法条。请将答案写在[法条]和<eoa>之间。"
CHARGE_INS = "请你模仿法官依据下面事实给出罪名，只需要给出罪名的名称，将答案写在[罪名]和<eoa>之间。"


def lawbench_tasks(js):
    out = []
    for j in js[20:60]:
        label = j["meta"]["accusation"][0].replace("[", "").replace("]", "")
        if len(out) % 2:
            out.append({"instruction": CHARGE_INS, "question": "事实：" + j["fact"], "answer": f"[罪名]{label}<eoa>"})
        else:
            out.append({"instruction": ART_INS, "question": f"事实：{j['fact']}\n罪名：{label}",
                        "answer": "[法条]刑法第" + cn(j["meta"]["relevant_articles"][0]) + "条<eoa>"})
    return out


ARGMINE = [
    ("被告人王某某持刀将被害人李某某砍伤，致李某某左手肌腱断裂，经鉴定为轻伤二级，请求依法追究其刑事责任。",
     {"A": "被告人王某某对指控的事实无异议，但辩称系被害人先动手。", "B": "辩护人提出被告人系初犯、偶犯。",
      "C": "被告人家属愿意赔偿。", "D": "本案证据已经调取完毕。", "E": "被告人当庭表示认罪认罚。"}, "1"),
    ("自诉人诉称，被告人张某某在其微信群中多次发布侮辱自诉人的言论，造成自诉人名誉严重受损。",
     {"A": "被告人的家庭经济困难。", "B": "被告人辩称，其在群里所发内容属实，不构成侮辱。", "C": "本案应当调解结案。",
      "D": "被告人认为管辖法院错误。", "E": "被告人已退出该微信群。"}, "2"),
    ("公诉机关指控，被告人赵某某趁被害人不备，从其挎包内窃取现金三千元，数额较大。",
     {"A": "辩护人对罪名无异议。", "B": "被告人的父母年事已高。", "C": "被告人辩称钱是被害人借给他的，并非窃取。",
      "D": "被告人自愿缴纳罚金。", "E": "被告人请求从轻处罚。"}, "3"),
    ("原告诉称，被告驾驶车辆追尾原告车辆，致原告车辆严重受损，请求判令被告赔偿修理费两万元。",
     {"A": "被告对事故责任认定无异议。", "B": "被告称车辆已投保。", "C": "被告同意调解。",
      "D": "被告认为原告主张的修理费过高，实际损失不足八千元。", "E": "被告申请延期审理。"}, "4"),
]


def argmine():
    out = []
    for k in range(12):
        sc, cands, ans = ARGMINE[k % len(ARGMINE)]
        out.append({"id": k, "text_id": k // 3, "sc": f"（第{cn(k + 1)}组）" + sc, "candidates": cands, "answer": ans})
    return out


def cjrc():
    docs = []
    for i in range(4):
        a, v, c = person(), person(), rng.choice(CITIES)
        money = rng.randint(2, 30)
        ctx = (f"经审理查明：原告{a}与被告{v}系朋友关系。{rng.randint(2015, 2019)}年，被告{v}因经营需要向原告{a}借款"
               f"{money}万元，约定一年内归还，并出具借条一张。借款到期后，被告{v}未归还借款，原告多次催要未果，遂诉至{c}人民法院。")
        qas = [{"question": f"被告{v}向原告借款多少？", "answers": [{"answer_start": 0, "text": f"{money}万元"}],
                "id": f"{i}_1", "is_impossible": "false"},
               {"question": "被告是否出具了借条？", "answers": [{"answer_start": -1, "text": "YES"}], "id": f"{i}_2",
                "is_impossible": "false"},
               {"question": "被告的职业是什么？", "answers": [], "id": f"{i}_3", "is_impossible": "true"}]
        docs.append({"paragraphs": [{"context": ctx, "casename": "民间借贷纠纷", "qas": qas}], "caseid": str(i),
                     "domain": "civil"})
    return {"data": docs, "version": "1.0"}


def ie():
    out = []
    for i in range(8):
        a, v = person(), person()
        g = f"{rng.randint(1, 20)}克"
        t = f"{rng.randint(2015, 2019)}年{rng.randint(1, 12)}月{rng.randint(1, 28)}日"
        s = f"{t}，被告人{a}在{rng.choice(PLACES)}将甲基苯丙胺{g}贩卖给{v}。"
        ents = [{"text": t, "label": "NT"}, {"text": a, "label": "Nh"}, {"text": "甲基苯丙胺", "label": "NDR"},
                {"text": g, "label": "NW"}, {"text": v, "label": "Nh"}]
        for e in ents:
            e["start"] = s.index(e["text"])
            e["end"] = e["start"] + len(e["text"])
        rels = [{"em1Text": a, "em2Text": v, "label": "sell_drugs_to", "e1start": s.index(a), "e21start": s.index(v)}]
        out.append({"articleId": i, "sentId": 0, "sentText": s, "entityMentions": ents, "relationMentions": rels})
    return out


# ---- exam MCQ ----------------------------------------------------------------------------------------------------------
MCQ = [
    ("甲醉酒后驾驶机动车在道路上行驶，未造成任何事故。关于甲的行为，下列说法正确的是？",
     {"A": "不构成犯罪", "B": "构成危险驾驶罪", "C": "构成交通肇事罪", "D": "构成以危险方法危害公共安全罪"}, "B"),
    ("甲趁乙不注意，从乙的口袋中取走钱包。甲的行为构成？", {"A": "抢夺罪", "B": "抢劫罪", "C": "盗窃罪", "D": "诈骗罪"}, "C"),
    ("根据宪法，中华人民共和国的一切权力属于？", {"A": "人民", "B": "全国人民代表大会", "C": "国务院", "D": "中国共产党"}, "A"),
    ("用人单位自用工之日起超过一个月不满一年未与劳动者订立书面劳动合同的，应当？",
     {"A": "支付一倍工资", "B": "每月支付二倍的工资", "C": "支付经济补偿", "D": "不承担责任"}, "B"),
    ("下列关于自首的说法，正确的有？", {"A": "犯罪以后自动投案", "B": "如实供述自己的罪行", "C": "可以从轻或者减轻处罚",
                               "D": "必须免除处罚"}, "ABC"),
    ("对于盗窃罪的入罪情形，下列哪些属于法定情形？", {"A": "多次盗窃", "B": "入户盗窃", "C": "携带凶器盗窃", "D": "扒窃"}, "ABCD"),
    ("夫妻双方自愿离婚的，应当到哪个机关申请离婚登记？", {"A": "人民法院", "B": "婚姻登记机关", "C": "公安机关", "D": "居民委员会"}, "B"),
    ("关于罪刑法定原则，下列说法正确的是？", {"A": "法律没有明文规定为犯罪行为的，不得定罪处刑", "B": "可以类推定罪",
                                 "C": "习惯法可以作为定罪依据", "D": "司法解释可以创设罪名"}, "A"),
]


def mcq_jsonl():
    return [{"id": f"sample-{i}", "subset": "sample", "question": q, "options": o, "answer": a,
             "multichoice": len(a) > 1, "source": "LexLab sample"} for i, (q, o, a) in enumerate(MCQ)]


def fakao():
    out = []
    for q, o, a in MCQ[:4]:
        body = q + "\n" + "\n".join(f"{k}. {v}" for k, v in o.items())
        out.append({"input": body, "output": f"根据相关法律规定分析各选项，{o[a[0]]}的说法符合法律规定。因此，答案是{a}。",
                    "type": "single"})
    return out


# ---- general instructions ---------------------------------------------------------------------------------------------
ALPACA = [
    ("把下面的句子翻译成英文。", "今天天气很好。", "The weather is very nice today."),
    ("列举三种常见的水果。", "", "苹果、香蕉和橙子。"),
    ("用一句话解释什么是光合作用。", "", "光合作用是植物利用光能把二氧化碳和水转化为有机物并释放氧气的过程。"),
    ("计算下面算式的结果。", "12乘以8等于多少？", "12乘以8等于96。"),
    ("写一句关于春天的诗句。", "", "春风拂面柳丝长，细雨润物百花香。"),
    ("给出一个保持健康的建议。", "", "每天保持适量运动，比如快走三十分钟，并注意均衡饮食和充足睡眠。"),
    ("总结下面这段话的主要意思。", "读书可以开阔视野，增长知识，还能陶冶情操。", "读书能开阔视野、增长知识并陶冶情操。"),
    ("将下列词语按字数从少到多排序。", "图书馆、书、书架", "书、书架、图书馆。"),
    ("解释成语“守株待兔”的意思。", "", "比喻死守狭隘经验，不知变通，或妄想不劳而获。"),
    ("推荐一本适合初学者阅读的编程书。", "", "可以从《Python编程：从入门到实践》开始，它循序渐进，例子丰富。"),
    ("判断下面的说法是否正确。", "地球绕着太阳转。", "正确，地球围绕太阳公转，一年转一圈。"),
    ("写一个简短的生日祝福。", "", "祝你生日快乐，愿新的一岁平安喜乐、心想事成！"),
]


def alpaca():
    return [{"instruction": i, "input": x, "output": o} for i, x, o in ALPACA]


def sharegpt():
    return [{"conversations": [{"from": "human", "value": "你好，你能做什么？"},
                               {"from": "gpt", "value": "你好！我可以回答问题、解释概念、帮你写作和翻译。"},
                               {"from": "human", "value": f"那请用一句话介绍一下{topic}。"},
                               {"from": "gpt", "value": ans}]}
            for topic, ans in [("长城", "长城是中国古代修建的军事防御工程，绵延万里。"),
                               ("熊猫", "大熊猫是中国特有的珍稀动物，以竹子为主要食物。"),
                               ("太阳", "太阳是离地球最近的恒星，为地球提供光和热。"),
                               ("围棋", "围棋是一种起源于中国的双人策略棋类游戏。")]]


def messages():
    return [{"messages": [{"role": "system", "content": "你是一个简洁的助手。"},
                          {"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in [("一年有几个季节？", "一年有四个季节：春、夏、秋、冬。"),
                         ("水的沸点是多少？", "在标准大气压下，水的沸点是100摄氏度。"),
                         ("中国的首都是哪里？", "中国的首都是北京。")]]


# ---- tiny LawBench eval set (LawBench layout: data/zero_shot/<task>.json) -----------------------------------------
AMOUNT_INS = ("请你仔细计算文书中涉及的犯罪总金额。无需给出计算过程，只需要给出最终金额，将答案写在[金额]与<eoa>之间，"
              "例如[金额]2000元<eoa>。")  # LawBench 3-7's instruction


def lawbench(js, arg):
    arts = statutes()
    t11 = [{"instruction": "请回答下面的问题，并把答案写在[答案]和<eoa>之间。",
            "question": f"{a['law']}{a['article_cn']}的内容是什么？", "answer": f"答案:{a['text']}"}
           for a in (arts[10], arts[16], arts[24])]  # planted: 刑法264, 宪法33, 劳动法36 are recited in training
    t28 = [{"instruction": "请你根据给定的一个诉方观点，从A,B,C,D,E五个辩方候选观点中选出可以与之形成争议观点对的一个观点，"
                           "并将答案写在[正确答案]和<eoa>之间。",
            "question": "句子：" + r["sc"] + "".join(f"{k}:{v}" for k, v in r["candidates"].items()),
            "answer": f"[正确答案]{'ABCDE'[int(r['answer']) - 1]}<eoa>"} for r in arg[:2]]  # planted
    t31 = [{"instruction": ART_INS, "question": f"事实：{j['fact']}\n罪名：{j['meta']['accusation'][0]}",
            "answer": f"法条:刑法第{j['meta']['relevant_articles'][0]}条"}
           for j in js[100:103]]  # planted: three judgments of the training file
    t33 = [{"instruction": CHARGE_INS, "question": "事实：" + f, "answer": f"罪名:{c}"} for f, c in [
        ("2020年5月1日，被告人某某在某商场内趁店员不备，秘密窃取金项链一条，价值人民币八千元。", "盗窃"),
        ("2020年6月3日，被告人某某冒充银行客服，虚构事实骗取被害人转账人民币两万元。", "诈骗")]]
    t38 = [{"instruction": "请你回答下面的法律咨询问题。", "question": q, "answer": "回答:" + a}
           for q, a in [("公司拖欠工资三个月，我可以直接辞职并要求补偿吗？",
                         "可以。依照《劳动合同法》第三十八条，用人单位未及时足额支付劳动报酬的，劳动者可以解除劳动合同，"
                         "并依照第四十六条要求支付经济补偿。"),
                        ("被狗咬伤了，狗主人要负什么责任？",
                         "依照《民法典》第一千二百四十五条，饲养的动物造成他人损害的，动物饲养人或者管理人应当承担侵权责任。")]]
    t37 = [{"instruction": AMOUNT_INS, "question": "文书:" + f, "answer": f"上文涉及到的犯罪金额:{a}元。"} for f, a in [
        ("经审理查明，2019年3月2日，被告人某某在某小区先后盗窃被害人甲的电动车一辆（价值人民币1800元）和被害人乙的"
         "现金人民币650元。\n", "2450.0"),
        ("经审理查明，被告人某某以投资为名，于2020年4月骗取被害人丙人民币30000元，同年6月又骗取被害人丁人民币"
         "12500元，案发后退还丙人民币5000元。\n", "42500.0"),
        ("经审理查明，2021年7月，被告人某某在商场内三次盗窃手机，价值分别为人民币2999元、1599.5元和899元。\n",
         "5497.5")]]  # amounts summed by hand; code mode (evaluate.py --code) must reproduce them
    return {"1-1": t11, "2-8": t28, "3-1": t31, "3-3": t33, "3-7": t37, "3-8": t38}


def dump_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    js = judgments()
    arg = argmine()
    dump_jsonl(HERE / "judgments.jsonl", js)
    dump_jsonl(HERE / "statutes.jsonl", statutes())
    dump_jsonl(HERE / "consult_qa.jsonl", consultations())
    dump_jsonl(HERE / "consult_laws.jsonl", consultations_laws())
    dump_jsonl(HERE / "lawbench_style_tasks.jsonl", lawbench_tasks(js))
    dump_jsonl(HERE / "cail_argmine.jsonl", arg)
    # SQuAD layout is one JSON object, not records: a .squad suffix keeps utils.sample_corpus (which reads
    # *.json as records) from tripping on it; prepare_data reads it by the cjrc format option.
    (HERE / "cail_cjrc.squad").write_text(json.dumps(cjrc(), ensure_ascii=False, indent=1), encoding="utf-8")
    dump_jsonl(HERE / "cail_ie.jsonl", ie())
    dump_jsonl(HERE / "exam_mcq.jsonl", mcq_jsonl())
    dump_jsonl(HERE / "exam_fakao.jsonl", fakao())
    with open(HERE / "exam_mcq.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["input", "output", "A", "B", "C", "D", "source", "multichoice"])
        for q, o, a in MCQ[4:]:
            w.writerow(["（多选）" + q, a, o["A"], o["B"], o["C"], o["D"], "LexLab sample", len(a) > 1])
    (HERE / "general_alpaca.json").write_text(json.dumps(alpaca(), ensure_ascii=False, indent=1), encoding="utf-8")
    dump_jsonl(HERE / "general_sharegpt.jsonl", sharegpt())
    dump_jsonl(HERE / "general_messages.jsonl", messages())
    lb = HERE / "lawbench" / "data" / "zero_shot"
    lb.mkdir(parents=True, exist_ok=True)
    for task, items in lawbench(js, arg).items():
        (lb / f"{task}.json").write_text(json.dumps(items, ensure_ascii=False, indent=1), encoding="utf-8")
    manifest = [  # a plain list: utils.sample_corpus reads every *.json as records
        {"name": "judgments", "kind": "judgments", "path": "judgments.jsonl"},
        {"name": "statutes", "kind": "statutes", "path": "statutes.jsonl"},
        {"name": "consult_qa", "kind": "consultation", "path": "consult_qa.jsonl"},
        {"name": "consult_laws", "kind": "consultation", "path": "consult_laws.jsonl"},
        {"name": "lawbench_style", "kind": "lawbench_task", "path": "lawbench_style_tasks.jsonl"},
        {"name": "cail_argmine", "kind": "cail_task", "path": "cail_argmine.jsonl", "options": {"format": "argmine"}},
        {"name": "cail_cjrc", "kind": "cail_task", "path": "cail_cjrc.squad", "options": {"format": "cjrc"}},
        {"name": "cail_ie", "kind": "cail_task", "path": "cail_ie.jsonl", "options": {"format": "ie"}},
        {"name": "exam_mcq", "kind": "exam_mcq", "paths": ["exam_mcq.jsonl", "exam_mcq.csv", "exam_fakao.jsonl"]},
        {"name": "general", "kind": "general",
         "paths": ["general_alpaca.json", "general_sharegpt.jsonl", "general_messages.jsonl"]},
    ]
    (HERE / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    # held-out judgments for the demo's judgment prediction: drawn last (the files above do not change), written
    # outside data/sample so neither the manifest nor the tiny tokenizer's corpus sees them
    dump_jsonl(HERE.parent / "judgments_test.jsonl", judgments(40))


if __name__ == "__main__":
    main()
