"""The severity and urgent-advice lexicons on hand-written, real-looking sentences.

Every lexicon entry has at least one positive sentence here (a test fails when an entry is added
without one), negated mentions must not count, co-occurrence rules need both parts, and raw
spellings (diacritics, أ/إ/آ, ة, ى, tatweel, Eastern digits, clitics) must still match.
"""
import pytest

from core import lexicon as L
from core.common import DataError

# entry id -> complaints that must match it; the complaint's label must be the entry's level
SEVERITY_POSITIVES = {
    "crit_chest_pain": ["اشعر بالم في الصدر منذ الصباح ويزداد مع الحركه",
                        "الم صدري من الجهه اليسرى مع تعرق بارد",
                        "والدي يشكو من اوجاع بالصدر عند المشي"],
    "crit_chest_hurts": ["صدري يؤلمني عندما امشي مسافه قصيره"],
    "crit_chest_tightness": ["احس بثقل في الصدر وكان شيئا يضغط علي",
                             "ضيق في صدري مع تعرق"],
    "crit_dyspnea": ["عندي ضيق تنفس شديد عند النوم",
                     "والدي يعاني من صعوبه في التنفس منذ امس"],
    "crit_short_breath": ["اشعر بضيق في النفس عند صعود السلم"],
    "crit_cannot_breathe": ["لا استطيع التنفس بشكل طبيعي منذ ساعه",
                            "ابني ما يقدر يتنفس زين في الليل"],
    "crit_choking": ["طفلي يختنق عند الرضاعه ويحمر لونه", "نوبات اختناق في الليل"],
    "crit_cyanosis": ["لاحظت ازرقاق الشفاه عند ابني بعد البكاء"],
    "crit_fainting": ["اصابتني حاله اغماء في العمل اليوم", "أُغمي عليها فجأة في المطبخ"],
    "crit_loss_of_consciousness": ["فقدت الوعي لمده دقيقه بعد الاستيقاظ"],
    "crit_coma": ["جدي دخل في غيبوبه سكر امس"],
    "crit_heavy_bleeding": ["عندي نزيف حاد من الانف منذ نصف ساعه",
                            "نزيف دم غزير بعد الولاده بعشره ايام"],
    "crit_vomiting_blood": ["ابي يستفرغ دم منذ الصباح", "تقيأت دماً مرتين اليوم"],
    "crit_blood_in_stool": ["لاحظت وجود دم في البراز منذ يومين",
                            "البراز لونه اسود مثل القطران"],
    "crit_coughing_blood": ["سعال مصحوب بالدم عند الصباح", "عندي كحه وبلغم فيه دم"],
    "crit_bleeding_in_pregnancy": ["انا حامل في الشهر الرابع وحصل عندي نزيف",
                                   "نزيف خفيف في الاسبوع الثامن من الحمل"],
    "crit_seizures": ["ابني عمره سنتين جاءته تشنجات مع الحراره"],
    "crit_epileptic_fit": ["اخي تاتيه نوبات صرع متكرره"],
    "crit_paralysis": ["والدتي اصيبت بشلل مفاجئ في يدها"],
    "crit_one_side_weakness": ["تنميل في نصف الجسم الايسر مع دوخه",
                               "ضعف في الجانب الايمن من الوجه"],
    "crit_slurred_speech": ["لاحظت ثقل في لسان والدي صباح اليوم"],
    "crit_sudden_speech_loss": ["جدي فجاه اصبح لا يستطيع الكلام",
                                "صعوبه مفاجئه في الكلام عند والدتي"],
    "crit_facial_droop": ["انحراف في الفم الى جهه اليسار عند الابتسام",
                          "لاحظنا انحرافا في فم والدتي فجاه"],
    "crit_stroke": ["اصيب ابي بجلطه دماغيه الشهر الماضي", "نزيف في المخ بعد ارتفاع الضغط"],
    "crit_heart_attack": ["عمي عنده ذبحه صدريه ويشعر بتعب", "تعرض لنوبه قلبيه قبل سنتين"],
    "crit_thrombosis": ["الطبيب شك في وجود جلطه في الساق"],
    "crit_poisoning": ["اكلنا من مطعم واصابنا تسمم غذائي"],
    "crit_overdose": ["اخذ اخي جرعه زائده من دواء الضغط"],
    "crit_swallowed_pills": ["ابني ابتلع عدد من حبوب الحديد"],
    "crit_swallowed_chemical": ["طفلتي شربت قليلا من الكلور", "ابتلع ابني بطاريه صغيره"],
    "crit_venomous_bite": ["تعرض ابني للدغه عقرب في القدم"],
    "crit_suicide": ["تراودني افكار انتحاريه منذ فتره"],
    "crit_self_harm": ["اختي تحاول ايذاء نفسها عندما تغضب"],
    "crit_death_wish": ["اتمنى الموت كل يوم ولا اجد رغبه في شيء",
                        "افكر في انهاء حياتي"],
    "crit_infant_fever": ["طفلي الرضيع حرارته مرتفعه جدا",
                          "ابنتي عمرها شهرين وحرارتها 39",
                          "مولود عمره اسبوع عنده ارتفاع في درجه الحراره"],
    "crit_face_throat_swelling": ["تورم في الشفتين والوجه بعد تناول الفول السوداني"],
    "crit_severe_allergy": ["عندي حساسيه شديده من البنسلين"],
    "crit_anaphylaxis": ["تعرض لصدمه تحسسيه بعد حقنه"],
    "crit_head_injury": ["وقع ابني على راسه بقوه وهو يلعب", "عنده ارتجاج في المخ بعد الحادث"],
    "crit_thunderclap_headache": ["اصابني اسوا صداع في حياتي", "صداع مفاجئ مثل الانفجار"],
    "crit_meningism": ["ابني عمره ست سنوات حرارته مرتفعه وعنده تيبس في الرقبه"],
    "crit_reduced_fetal_movement": ["انا في الشهر الثامن ولاحظت قله حركه الجنين",
                                    "الجنين لا يتحرك منذ الصباح"],
    "crit_severe_dehydration": ["ابني عنده جفاف شديد ولا يبلل الحفاض"],
    "crit_testicular_torsion": ["الطبيب قال احتمال التواء الخصيه", "الم مفاجئ وشديد في الخصيه اليسرى"],
    "crit_urinary_retention": ["والدي عنده احتباس في البول منذ الصباح", "عدم القدره على التبول منذ ساعات"],
    "crit_vision_loss": ["فقدت البصر في عيني اليمنى فجاه"],
    "crit_open_fracture": ["كسر مفتوح في الساق بعد حادث سياره"],
    "crit_severe_burn": ["حروق من الدرجه الثالثه في اليد"],
    "crit_severe_drop": ["هبوط حاد في السكر عند والدتي"],
    "crit_pregnancy_tissue": ["انا حامل في الشهر الثالث ونزلت مني قطع دم اليوم",
                              "خروج كتل من الرحم خلال الاسبوع الثامن من الحمل"],
    "crit_pregnancy_cramps": ["زوجتي حامل وعندها مغص شديد في اسفل البطن"],
    "crit_threatened_miscarriage": ["الطبيبه قالت عندي تهديد بالاجهاض في الشهر الثاني",
                                    "تشخيص اجهاض منذر ماذا افعل"],
    "crit_spreading_infection": ["احمرار في الساق يمتد للاعلى مع حراره مرتفعه",
                                 "التهاب في الاصبع ينتشر في اليد وعندي حمى ورعشه"],
    "crit_growing_lump": ["عندي كتله في الرقبه تكبر مع الوقت", "حبه في الثدي يزداد حجمها كل شهر"],
    "mod_fever": ["عندي حمى وقشعريره منذ امس", "ابني عنده حراره وسعال",
                  "ارتفاع في درجه حراره ابني عمره اربع سنوات"],
    "mod_severe_pain": ["الم شديد في الركبه عند المشي", "صداع قوي يتكرر كل يوم"],
    "mod_long_lasting_pain": ["اعاني من الم في الظهر منذ ثلاثه اشهر",
                              "ركبتي توجعني من سنتين"],
    "mod_infection": ["عندي التهاب في اللوز", "خراج في اللثه مع انتفاخ بسيط"],
    "mod_vomiting_diarrhea": ["ابنتي عمرها خمس سنوات عندها اسهال واستفراغ"],
    "mod_bleeding": ["نزيف خفيف من اللثه عند تنظيف الاسنان"],
    "mod_blood_in_urine": ["لاحظت دم في البول صباح اليوم"],
    "mod_diabetes": ["انا مريض سكري واريد معرفه النظام الغذائي المناسب",
                     "ارتفاع السكر عند والدي رغم الالتزام بالعلاج",
                     "هل السكر التراكمي 6 طبيعي"],
    "mod_hypertension": ["والدي يعاني من ارتفاع ضغط الدم"],
    "mod_asthma": ["ابني عنده ربو ويستخدم البخاخ", "تاتيني ازمه صدريه في الشتاء"],
    "mod_thyroid": ["عندي خمول في الغده الدرقيه واشعر بالتعب"],
    "mod_kidney": ["عندي حصوه في الكلى حجمها 5 ملم", "والدي يقوم بغسيل كلوي"],
    "mod_heart_disease": ["والدي عنده ضعف في عضله القلب"],
    "mod_palpitations": ["اشعر بخفقان في القلب عند التوتر", "سرعه في ضربات القلب"],
    "mod_epilepsy": ["ابني مريض صرع ويتناول دواء ديباكين"],
    "mod_liver": ["نتيجه التحليل تقول ان عندي دهون على الكبد",
                  "اصفرار في عيون المولود بعد الولاده"],
    "mod_cancer_lump": ["اكتشفت كتله صغيره في الثدي"],
    "mod_anemia": ["عندي فقر دم ونسبه الهيموجلوبين 9"],
    "mod_fracture_burn": ["كسر في اصبع القدم بعد سقوط شيء ثقيل عليه",
                          "احترقت يدي بالزيت الساخن"],
    "mod_weight_loss": ["نقص في الوزن بشكل ملحوظ خلال شهرين",
                        "فقدان الوزن بدون سبب واضح"],
    "mod_persistent_cough": ["كحه مستمره عند ابني"],
    "mod_depression_psychosis": ["اعاني من اكتئاب منذ وفاه والدي"],
}

# (complaint, entry that must NOT match, expected label): negated mentions
NEGATED = [
    ("لا اعاني من الم في الصدر", "crit_chest_pain", "mild"),
    ("لا اعاني من الم في الصدر ولا ضيق في التنفس", "crit_dyspnea", "mild"),
    ("ليس عندي حمى ولا سعال", "mod_fever", "mild"),
    ("ما عندي حراره والحمد لله", "mod_fever", "mild"),
    ("لم يحدث اغماء ابدا", "crit_fainting", "mild"),
    ("الدوره جاءت بدون نزيف غزير", "crit_heavy_bleeding", "mild"),
    ("لا يوجد دم في البراز", "crit_blood_in_stool", "mild"),
    ("البراز لا يوجد به دم", "crit_blood_in_stool", "mild"),
    ("مافي ضيق تنفس بس كحه خفيفه", "crit_dyspnea", "mild"),
    ("لم افكر في الانتحار ابدا", "crit_suicide", "mild"),
    ("لا يوجد عندي تشنجات", "crit_seizures", "mild"),
    ("انا غير مصاب بالسكري", "mod_diabetes", "mild"),
    ("ولم اشعر بالم في الصدر", "crit_chest_pain", "mild"),
    ("دون التهاب في الحلق", "mod_infection", "mild"),
]

# negator-looking phrases that do not negate (still, cannot, do not know, abnormal ...)
NOT_NEGATED = [
    ("لا يزال الالم في الصدر مستمرا", "crit_chest_pain"),
    ("ما زال ضيق التنفس موجودا", "crit_dyspnea"),
    ("لم يتوقف النزيف الحاد منذ ساعه", "crit_heavy_bleeding"),
    ("لا اعرف سبب ضيق التنفس", "crit_dyspnea"),
    ("ما سبب الم في الصدر عند الضحك", "crit_chest_pain"),
    ("ما هو علاج ضيق التنفس", "crit_dyspnea"),
    ("لا استطيع النوم بسبب الم في الصدر", "crit_chest_pain"),
    ("نبضات القلب غير منتظمه مع الم في الصدر", "crit_chest_pain"),
    ("لا اعاني من السعال لكن عندي ضيق في التنفس", "crit_dyspnea"),
    ("لا اعاني من السعال ولكن عندي ضيق في التنفس", "crit_dyspnea"),
    ("لا، الم في الصدر بدا فجاه", "crit_chest_pain"),  # the comma ends the negation's sentence
]

MILD = [
    "عندي حب شباب في الوجه منذ سنه",
    "ما هو افضل كريم لتفتيح البشره",
    "تساقط الشعر بعد الولاده هل هو طبيعي",
    "اريد انقاص وزني عشره كيلو",
    "هل يمكن تناول القهوه مع حبوب منع الحمل",
    "عندي حراره في المعده بعد الاكل",
    "طفلي عمره ستة أشهر متى ابدا بالطعام الصلب",
    "اسناني صفراء واريد تبييضها",
    "مصدر الفيتامين د في الطعام",
    "ابني ذكي لكن عنده صعوبه في الكلام وعمره ثلاث سنوات",
    "تشنج عضلي في الساق بعد الرياضه",
    "اريد ان ادرس في كليه الطب",
    "هل حرق الدهون يحتاج الى رياضه يوميه",
]

URGENT_POSITIVES = {
    "urg_emergency_department": ["يجب التوجه الى قسم الطوارئ لعمل تخطيط للقلب",
                                 "خذيه للطوارئ الان"],
    "urg_ambulance": ["اتصل بالاسعاف ولا تقد السياره بنفسك"],
    "urg_emergency_case": ["هذه حاله طارئه تستدعي الفحص"],
    "urg_urgent_manner": ["يجب ان يراك طبيب بشكل عاجل"],
    "urg_seek_care_now": ["يجب مراجعه الطبيب على الفور", "توجهي فورا الى اقرب مستشفى"],
    "urg_now_to_hospital": ["خذوه حالا الى المستشفى"],
    "urg_hospital_now": ["يجب الذهاب الى المستشفى فورا"],
    "urg_nearest_hospital": ["اذهب الى اقرب مستشفى لعمل الفحوصات اللازمه"],
    "urg_without_delay": ["يجب عرض الطفل على طبيب دون تاخير"],
    "urg_do_not_wait": ["لا تنتظر حتى الصباح"],
    "urg_emergency_number": ["اتصل على 997 اذا فقد الوعي"],
    "urg_life_threatening": ["هذه الاعراض قد تكون مهدده للحياه"],
    "urg_intensive_care": ["قد يحتاج الى دخول العنايه المركزه"],
    "urg_immediate_intervention": ["الحاله تحتاج الى تدخل جراحي عاجل"],
}

URGENT_ALSO = [  # advice that counts although a negator-looking word is near
    "لا تتردد في التوجه الى الطوارئ اذا زاد الالم",
    "لا بد من مراجعه الطوارئ",
    "اذا لم يتوقف النزيف اتصل بالاسعاف",
    "لا داعي للقلق لكن اذهب الى الطوارئ اذا ظهر ضيق في التنفس",
    "اذا لم تتحسن الحاله توجه الى الطوارئ",
]

URGENT_NEGATIVES = [
    "لا داعي للذهاب الى الطوارئ",
    "لا داعي للذهاب الى الطوارئ فالحاله بسيطه وتتحسن مع الراحه",
    "الحاله لا تستدعي الذهاب الى الطوارئ",
    "لا تحتاج الى الذهاب الى الطوارئ",
    "ليست حاله طارئه ويمكن علاجها في البيت",
    "ابدا العلاج فورا واستمر عليه اسبوعا",
    "توقف عن تناول الدواء على الفور",
    "راجع طبيب الاسنان في اقرب وقت",
    "يمكنك تعلم الاسعافات الاوليه",
    "لا تتردد في سؤالنا عن اي استفسار",
    "اشرب الماء بكميات كافيه وخذ قسطا من الراحه",
    "يفضل مراجعه طبيب الجلديه لتقييم الحاله",
    "التزم بالعلاج مع تمنياتي بالشفاء العاجل",
    "راجع طبيبك ونتمنى لك الشفاء العاجل",
]


def ids(text, entries):
    return {e.id for e in L.find_matches(text, entries)}


def test_every_entry_has_a_positive_sentence():
    assert set(SEVERITY_POSITIVES) == {e.id for e in L.severity_lexicon()}
    assert set(URGENT_POSITIVES) == {e.id for e in L.urgent_lexicon()}


@pytest.mark.parametrize("entry_id,text", [(k, s) for k, v in SEVERITY_POSITIVES.items() for s in v])
def test_severity_positive(entry_id, text):
    label, matched = L.severity_of(text)
    level = {e.id: e.level for e in L.severity_lexicon()}[entry_id]
    assert entry_id in {e.id for e in matched}, (text, [e.id for e in matched])
    assert label == level, (text, label, [e.id for e in matched])


@pytest.mark.parametrize("text,entry_id,label", NEGATED)
def test_negated_mentions_are_ignored(text, entry_id, label):
    got, matched = L.severity_of(text)
    assert entry_id not in {e.id for e in matched}
    assert got == label, (text, got, [e.id for e in matched])


@pytest.mark.parametrize("text,entry_id", NOT_NEGATED)
def test_pseudo_negation_and_contrast(text, entry_id):
    assert entry_id in ids(text, L.severity_lexicon())


@pytest.mark.parametrize("text", MILD)
def test_mild(text):
    label, matched = L.severity_of(text)
    assert (label, matched) == ("mild", []), [e.id for e in matched]


def test_highest_level_wins_and_all_matches_are_returned():
    label, matched = L.severity_of("عندي حمى واسهال والم في الصدر")
    assert label == "critical"
    assert [e.id for e in matched] == ["crit_chest_pain", "mod_fever", "mod_vomiting_diarrhea"]
    assert L.severity_of("عندي حمى واسهال")[0] == "moderate"


def test_co_occurrence_needs_both_parts():
    lex = L.severity_lexicon()
    assert "crit_infant_fever" in ids("رضيعي عمره شهر وحرارته 39", lex)
    # high fever without an infant; an infant without fever; a negated fever
    assert L.severity_of("ابني عمره عشر سنوات حرارته 39")[0] == "moderate"
    assert L.severity_of("رضيعي عمره شهر ويبكي كثيرا")[0] == "mild"
    assert "crit_infant_fever" not in ids("رضيعي عمره شهر وليس عنده حراره مرتفعه", lex)
    # the parts may come in either order and far apart
    assert "crit_infant_fever" in ids("حرارته مرتفعه منذ الصباح ولا يرضع جيدا وهو مولود منذ عشره ايام", lex)
    assert "crit_meningism" not in ids("تيبس في الرقبه بعد النوم", lex)
    assert "crit_sudden_speech_loss" not in ids("عنده صعوبه في الكلام", lex)
    assert "crit_bleeding_in_pregnancy" not in ids("نزيف من الانف عند ابني", lex)
    assert "crit_bleeding_in_pregnancy" not in ids("انا حامل ولا يوجد نزيف", lex)


def test_normalization_of_raw_spellings():
    assert L.severity_of("أشعرُ بألَمٍ شديدٍ في الصَّدْرِ")[0] == "critical"  # diacritics, أ
    assert L.severity_of("ألــــم في الصدر")[0] == "critical"  # tatweel
    assert "mod_thyroid" in ids("مشكلة في الغدة الدرقية", L.severity_lexicon())  # ة
    assert "mod_fever" in ids("عندي حُمّى", L.severity_lexicon())  # ى and shadda
    assert "crit_fainting" in ids("إغماء متكرر", L.severity_lexicon())  # إ
    assert "crit_infant_fever" in ids("رضيعتي حرارتها ٣٩٫٥", L.severity_lexicon())  # Eastern digits
    assert "crit_infant_fever" in ids("رضيعتي حرارتها 39.5", L.severity_lexicon())  # decimals


def test_clitics_and_word_boundaries(tmp_path):
    path = tmp_path / "lex.tsv"
    path.write_text("id\tlevel\tpattern\tnote\n"
                    "chest\tcritical\tصدر\tchest\n"
                    "gap\tmoderate\tالم ...1 بطن\tpain, at most one word, belly\n"
                    "stem\tmoderate\tتشنج*\tstem\n", encoding="utf-8")
    lex = L.load_lexicon(path)
    for word in ["صدر", "الصدر", "بالصدر", "وبالصدر", "للصدر", "فالصدر", "والصدر", "كالصدر"]:
        assert ids(f"عندي وجع {word} اليوم", lex) == {"chest"}, word
    for word in ["مصدر", "صدري", "الصدريه", "صدرت"]:  # other words that contain صدر
        assert ids(f"عندي {word} اليوم", lex) == set(), word
    assert ids("الم بطن", lex) == {"gap"}
    assert ids("الم في البطن", lex) == {"gap"}
    assert ids("الم شديد في البطن", lex) == set()  # two words skipped > ...1
    assert ids("التشنجات", lex) == {"stem"}
    assert ids("اشعر الما في البطن", lex) == {"gap"}  # accusative ending ا
    assert ids("اشعر الماء في البطن", lex) == set()
    assert ids("منشنج", lex) == set()


def test_urgent_entries():
    for entry_id, texts in URGENT_POSITIVES.items():
        for text in texts:
            assert entry_id in ids(text, L.urgent_lexicon()), (entry_id, text)
            assert L.mentions_urgent_care(text), text


@pytest.mark.parametrize("text", URGENT_ALSO)
def test_urgent_despite_negator_like_words(text):
    assert L.mentions_urgent_care(text)


@pytest.mark.parametrize("text", URGENT_NEGATIVES)
def test_not_urgent(text):
    found = L.find_matches(text, L.urgent_lexicon(), window=L.URGENT_NEGATION_WINDOW)
    assert not L.mentions_urgent_care(text), [e.id for e in found]


def test_lexicon_files_are_well_formed():
    for entries in (L.severity_lexicon(), L.urgent_lexicon()):
        assert len({e.id for e in entries}) == len(entries)
        for e in entries:
            assert e.note and e.conditions
    assert {e.level for e in L.severity_lexicon()} == {"critical", "moderate"}
    assert {e.level for e in L.urgent_lexicon()} == {"urgent"}


@pytest.mark.parametrize("line,field,message", [
    ("a\tsevere\tصدر\tnote", "level", "not one of"),
    ("a\tcritical\tالصدرة\tnote", "pattern", "normalized"),
    ("a\tcritical\tتش*\tnote", "pattern", "shorter than 3"),
    ("a\tcritical\t... صدر\tnote", "pattern", "must follow a word"),
    ("a\tcritical\tصدر ...\tnote", "pattern", "must be followed"),
    ("a\tcritical\tصدر || \tnote", "pattern", "empty phrase"),
    ("a\tcritical\tصدر\t", "note", "empty"),
    ("A b\tcritical\tصدر\tnote", "id", "lower-case"),
    ("a\tcritical\tصدر", None, "4 tab-separated columns"),
    ("b\tcritical\tصدر\tnote\na\tcritical\tصدر\tnote\nb\tmoderate\tالم\tnote", "id", "duplicate"),
])
def test_bad_lexicon_lines(tmp_path, line, field, message):
    path = tmp_path / "bad.tsv"
    path.write_text("# a comment\nid\tlevel\tpattern\tnote\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        L.load_lexicon(path)
    assert e.value.field == field and message in str(e.value)
    assert e.value.line == 2 + line.count("\n") + 1 and str(path) in str(e.value)


def test_missing_header(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("a\tcritical\tصدر\tnote\n", encoding="utf-8")
    with pytest.raises(DataError, match="header"):
        L.load_lexicon(path)
